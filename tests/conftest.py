"""Shared fixtures: small models (fast on 2 cores) and small structures."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from ase import Atoms
from ase.build import bulk, molecule

from backbones import M3GNet
from fidelity_adapters import wrap

SMALL = dict(node_dim=16, edge_dim=16, hidden=(16,), readout_hidden=(16, 16))


def small_potential(elements, fidelities, dtype=torch.float64, seed=0, **options):
    torch.manual_seed(seed)
    state_dim = options.pop("state_dim", 8 if len(fidelities) > 1 else 0)
    backbone = M3GNet(n_elements=len(elements), state_dim=state_dim, **{**SMALL, **options}).to(dtype)
    return wrap(backbone, fidelities, elements)


@pytest.fixture
def si_potential():
    return small_potential(["Si"], ["PBE", "SCAN"])


@pytest.fixture
def water_potential():
    return small_potential(["H", "O"], ["PBE", "SCAN"])


def rattled_si(repeat=1, seed=0, amplitude=0.05, shear=0.15):
    atoms = bulk("Si", "diamond", a=5.43).repeat(repeat)
    atoms.cell[0, 1] += shear * repeat  # triclinic
    atoms.positions += np.random.default_rng(seed).normal(scale=amplitude, size=atoms.positions.shape)
    atoms.info["fidelity"] = "PBE"
    return atoms


def water_dimer(seed=0) -> Atoms:
    a = molecule("H2O")
    b = molecule("H2O")
    b.positions += [2.9, 0.2, 0.1]
    atoms = a + b
    atoms.positions += np.random.default_rng(seed).normal(scale=0.03, size=atoms.positions.shape)
    atoms.info["fidelity"] = "PBE"
    return atoms
