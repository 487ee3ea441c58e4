"""Pretrained potentials by name: matgl's MatPES M3GNet imported into our native M3GNet.

The weights are read from shared/pretrained beside the checkout (never copied into the
project); without them these tests skip. The comparison with matgl 2.0.4 itself needs its own
environment (shared/pretrained/README.md): set FA_MATGL_REFERENCE_PYTHON to its python.
"""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch
from ase import Atoms
from ase.build import bulk, molecule

from backbones import M3GNet
from fidelity_adapters import FidelityCalculator, cli
from fidelity_adapters.data import from_atoms
from fidelity_adapters.pretrained import REGISTRY, available, entry, load_pretrained

PBE = "matgl:M3GNet-MatPES-PBE-v2025.1"
R2SCAN = "matgl:M3GNet-MatPES-r2SCAN-v2025.1"
needs_matgl_weights = pytest.mark.skipif(
    entry(PBE).locate()[0] is None, reason=f"matgl MatPES weights not found: {entry(PBE).locate()[1]}"
)


def _oxide():
    atoms = bulk("MgO", "rocksalt", a=4.21)
    atoms.cell[0, 1] += 0.3  # triclinic
    atoms.rattle(0.05, seed=3)
    return atoms


def _predict(potential, atoms, fidelity):
    atoms = atoms.copy()
    atoms.calc = FidelityCalculator(potential, fidelity)
    stress = atoms.get_stress() if atoms.pbc.all() else np.zeros(6)
    return atoms.get_potential_energy(), atoms.get_forces(), stress


def test_registry_lists_every_model_with_where_or_why():
    listed = {model.name: (where, why) for model, where, why in available()}
    assert set(listed) == set(REGISTRY) >= {PBE, R2SCAN, "sevenn:7net-0", "sevenn:7net-l3i5", "sevenn:7net-mf-0"}
    assert all(why for _, why in listed.values())
    with pytest.raises(ValueError, match="unknown pretrained model 'matgl:M3GNet-MP'"):
        load_pretrained("matgl:M3GNet-MP")


def test_cli_lists_pretrained_models(capsys):
    assert cli.main(["pretrained"]) == 0
    out = capsys.readouterr().out
    assert PBE in out and "sevenn:7net-mf-0" in out


def test_missing_weights_are_reported(monkeypatch, tmp_path):
    monkeypatch.setattr("fidelity_adapters.pretrained.pretrained_roots", lambda: [tmp_path])
    with pytest.raises(FileNotFoundError, match="no matgl/M3GNet-MatPES-PBE-v2025.1-PES"):
        load_pretrained(PBE)


@needs_matgl_weights
def test_commands_run_a_pretrained_model_by_name(tmp_path, capsys):
    """evaluate (like eos, relax and md) takes a registered name where a model file is expected:
    labels made by that model score zero error, so the name loaded that very model."""
    from ase.calculators.singlepoint import SinglePointCalculator
    from ase.io import write

    frames = []
    for atoms in (molecule("H2O"), _oxide()):
        energy, forces, _ = _predict(load_pretrained(R2SCAN), atoms, "r2SCAN")
        atoms.calc = SinglePointCalculator(atoms, energy=energy, forces=forces)
        frames.append(atoms)
    write(tmp_path / "labelled.extxyz", frames)
    capsys.readouterr()
    assert cli.main(["evaluate", R2SCAN, str(tmp_path / "labelled.extxyz"), "--data-fidelity", "r2SCAN", "--fidelity", "r2SCAN", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["force_mae"] < 1e-5 and result["energy_mae_per_atom"] < 1e-5, result
    assert cli.main(["evaluate", PBE, str(tmp_path / "labelled.extxyz"), "--data-fidelity", "r2SCAN", "--fidelity", "r2SCAN"]) == 2
    assert "r2SCAN" in capsys.readouterr().err  # PBE's model has no r2SCAN level: named, no fall-back


def test_m3gnet_options_are_checked():
    with pytest.raises(ValueError, match="messages_to"):
        M3GNet(n_elements=1, messages_to="sideways")
    with pytest.raises(ValueError, match="three_body_basis"):
        M3GNet(n_elements=1, three_body_basis="gaussian")


@needs_matgl_weights
def test_matgl_import_has_matgls_size_and_references():
    potential = load_pretrained(PBE)
    assert potential.fidelities == ["PBE"] and len(potential.elements) == 89
    assert sum(p.numel() for p in potential.parameters()) == 664_221  # as shared/pretrained/README.md says
    assert float(potential.fidelity_state.scale) == pytest.approx(3.25149679, rel=1e-6)
    oxygen = potential.elements.index(8)
    assert float(potential.fidelity_state.elemental_energies[0, oxygen]) == pytest.approx(-1.54690765, rel=1e-6)


@needs_matgl_weights
def test_imported_forces_and_stress_are_energy_derivatives():
    potential = load_pretrained(R2SCAN, dtype=torch.float64)
    atoms = _oxide()
    energy, forces, stress = _predict(potential, atoms, "r2SCAN")
    h = 1e-4
    for atom, axis in [(0, 0), (1, 2)]:
        shifted = []
        for sign in (1, -1):
            moved = atoms.copy()
            moved.positions[atom, axis] += sign * h
            shifted.append(_predict(potential, moved, "r2SCAN")[0])
        assert -(shifted[0] - shifted[1]) / (2 * h) == pytest.approx(forces[atom, axis], abs=1e-6)
    strained = []
    for sign in (1, -1):
        moved = atoms.copy()
        moved.set_cell(atoms.cell.array @ (np.eye(3) + sign * h * np.diag([1, 0, 0])), scale_atoms=True)
        strained.append(_predict(potential, moved, "r2SCAN")[0])
    assert (strained[0] - strained[1]) / (2 * h) / atoms.get_volume() == pytest.approx(stress[0], abs=1e-7)


@needs_matgl_weights
def test_added_fidelity_starts_as_the_base_and_can_learn():
    base = load_pretrained(PBE, dtype=torch.float64)
    extended = load_pretrained(PBE, add=["SCAN", "r2SCAN"], dtype=torch.float64)
    assert extended.fidelities == ["PBE", "SCAN", "r2SCAN"] and extended.backbone.state_dim == 16
    for atoms in (_oxide(), molecule("CH4")):
        expected = _predict(base, atoms, "PBE")
        for fidelity in extended.fidelities:
            for got, want in zip(_predict(extended, atoms, fidelity), expected):
                np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)
    # the state path is live: a SCAN energy loss reaches the zero-initialised state columns
    structure = from_atoms(_oxide(), "SCAN")
    structure.energy = -30.0
    out = extended(extended.graph(structure), forces=False, training=True)
    out["energy"].sum().backward()
    first = extended.backbone.blocks[0].edge_update.value[0].weight
    assert first.grad[:, -16:].abs().sum() > 0


@needs_matgl_weights
def test_element_the_model_lacks_is_named():
    potential = load_pretrained(PBE)
    polonium = Atoms("Po2", positions=[[0, 0, 0], [0, 0, 2.5]])
    with pytest.raises(ValueError, match="Po"):
        potential.predict([polonium], "PBE")


@needs_matgl_weights
@pytest.mark.skipif(not os.environ.get("FA_MATGL_REFERENCE_PYTHON"), reason="FA_MATGL_REFERENCE_PYTHON (matgl 2.0.4 env) not set")
def test_import_equals_matgl_2_0_4():
    from fidelity_adapters.pretrained.matgl_check import differences, matgl_predictions, reference_structures

    structures = reference_structures()
    for name in (PBE, R2SCAN):
        reference = matgl_predictions(os.environ["FA_MATGL_REFERENCE_PYTHON"], name, structures, False, True)
        for row in differences(name, structures, reference, torch.float32):
            assert row["energy_per_atom"] < 1e-5 and row["force"] < 1e-4, row
            assert row["stress"] is None or row["stress"] < 1e-5, row


@pytest.mark.skipif(entry("sevenn:7net-mf-0").locate()[0] is None, reason="sevenn is not installed")
def test_sevenn_by_name_with_an_added_fidelity():
    potential = load_pretrained("sevenn:7net-mf-0", add=["SCAN"], dtype=torch.float64)
    assert potential.fidelities == ["r2SCAN", "PBE", "SCAN"]
    atoms = _oxide()
    for got, want in zip(_predict(potential, atoms, "SCAN"), _predict(potential, atoms, "r2SCAN")):
        np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)
    with pytest.raises(ValueError, match="no modalities"):
        load_pretrained("sevenn:7net-0", add=["SCAN"])
