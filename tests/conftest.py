"""Shared fixtures: small models (fast on 2 cores) and small structures."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from ase import Atoms
from ase.build import bulk, molecule
from ase.calculators.emt import EMT
from ase.calculators.singlepoint import SinglePointCalculator
from ase.io import write

from backbones import M3GNet
from fidelity_adapters import from_atoms, wrap

@pytest.fixture(autouse=True)
def _keep_torch_threads():
    """The CLI sets torch's thread count (--threads); a test calling it must not change the
    threads of the tests after it."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


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


def water_box(triclinic: bool = True, seed: int = 0) -> Atoms:
    """Eight water molecules in a 6.2 A periodic cell (sheared when triclinic)."""
    rng = np.random.default_rng(seed)
    atoms = Atoms(cell=np.diag([6.2, 6.2, 6.2]), pbc=True)
    for corner in np.ndindex(2, 2, 2):
        water = molecule("H2O")
        water.rotate(rng.uniform(0, 360), rng.normal(size=3))
        water.positions += 3.1 * np.array(corner) + 1.5
        atoms += water
    if triclinic:
        atoms.set_cell(atoms.cell.array + [[0, 0, 0], [1.1, 0, 0], [0.6, -0.8, 0]], scale_atoms=True)
    atoms.positions += rng.normal(scale=0.05, size=atoms.positions.shape)
    return atoms


CU_OPTIONS = {**SMALL, "cutoff": 3.0, "three_body_cutoff": 2.8}


def emt_cu_cells(n, seed=0):
    """Rattled 4-atom Cu cells with EMT energy and forces: (atoms without calculator, E, F)."""
    rng = np.random.default_rng(seed)
    for _ in range(n):
        atoms = bulk("Cu", "fcc", a=3.6 + 0.05 * rng.normal(), cubic=True)
        atoms.positions += rng.normal(scale=0.08, size=atoms.positions.shape)
        atoms.calc = EMT()
        energy, forces = atoms.get_potential_energy(), atoms.get_forces()
        atoms.calc = None
        yield atoms, energy, forces


def high_level(energy, forces, n_atoms):
    """The synthetic 'hi' fidelity: scaled EMT with a 2 eV/atom shifted reference."""
    return 1.1 * energy + 2.0 * n_atoms, 1.1 * forces


def labelled(atoms, fidelity, energy, forces, label, **info):
    frame = atoms.copy()
    frame.info.update(fidelity=fidelity, energy=energy, **info)
    frame.arrays["forces"] = forces
    return from_atoms(frame, label=label)


def paired_cu(n=20, seed=0, shared=True):
    """Cu cells labelled 'lo' (EMT) and 'hi' (see high_level) with a shared struct_id; with
    shared=False every geometry gets only one of the two labels."""
    out = []
    for k, (atoms, energy, forces) in enumerate(emt_cu_cells(n, seed)):
        levels = {"lo": (energy, forces), "hi": high_level(energy, forces, len(atoms))}
        for name, (e, f) in levels.items():
            if shared or (name == "hi") == (k % 2 == 0):
                out.append(labelled(atoms, name, e, f, f"cu {k} {name}", struct_id=k))
    return out


@pytest.fixture
def data_file(tmp_path):
    """An extxyz file of 8 labelled water dimers, SCAN and PBE alternating (for the command line)."""
    frames = []
    for k in range(8):
        atoms = water_dimer(seed=k)
        fidelity = "PBE" if k % 2 else "SCAN"
        atoms.info["fidelity"] = fidelity
        energy = -4150.0 - 0.3 * (fidelity == "SCAN") + 0.01 * k
        atoms.calc = SinglePointCalculator(atoms, energy=energy, forces=np.random.default_rng(k).normal(size=(6, 3)))
        frames.append(atoms)
    path = tmp_path / "clusters.extxyz"
    write(path, frames)
    return path
