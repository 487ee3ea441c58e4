"""Exported potentials (torch.export, one fidelity per file): equal to the eager model on a
molecule, a crystal and a triclinic cell; the fidelity and the FiLM injection are part of the
exported graph; a wrong fidelity at load is an error."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp
from ase.build import bulk

from conftest import rattled_si, small_potential, water_box, water_dimer
from fidelity_adapters.export import ExportedPotential, export_potential, graph_inputs
from fidelity_adapters.fidelity_state import UnknownFidelityError
from fidelity_adapters.recipes import mace_style_potential

TINY_E3NN = {"channels": 8, "n_basis": 6, "radial_hidden": 8, "readout_hidden": 8, "lmax": 1}


def eager(potential, atoms, fidelity):
    graph = potential.graph(atoms, fidelity)
    out = potential(graph, forces=True, stress=atoms.pbc.all())
    virial = -abs(np.linalg.det(atoms.cell.array)) * out["stress"][0].detach().numpy() if atoms.pbc.all() else None
    return float(out["energy"][0].detach()), out["forces"].detach().numpy(), virial


def check_equal(potential, path, cases, fidelity="SCAN", tolerances=(1e-6, 1e-6, 1e-6)):
    """Exported = eager on each case: energy per atom, forces, virial within `tolerances`."""
    exported = ExportedPotential(path, fidelity)
    for atoms in cases:
        energy, forces, virial = exported(*graph_inputs(potential.graph(atoms, fidelity)))
        reference = eager(potential, atoms, fidelity)
        assert abs(float(energy) - reference[0]) / len(atoms) < tolerances[0]
        np.testing.assert_allclose(forces.numpy(), reference[1], atol=tolerances[1])
        if reference[2] is not None:
            np.testing.assert_allclose(virial.numpy(), reference[2], atol=tolerances[2])


def test_exported_m3gnet_equals_eager(tmp_path):
    """Molecule (no cell), crystal, triclinic cell and a one-atom cell; sizes other than the
    traced example's."""
    potential = small_potential(["H", "O", "Si"], ["PBE", "SCAN"])
    path = tmp_path / "m3gnet_scan.pt2"
    metadata = export_potential(potential, "SCAN", path)
    assert metadata["fidelity"] == "SCAN" and metadata["elements"] == ["H", "O", "Si"] and metadata["cutoff"] == 5.0
    cases = [water_dimer(), rattled_si(repeat=2, shear=0.0), water_box(triclinic=True), bulk("Si", "sc", a=2.6)]
    check_equal(potential, path, cases)


def test_exported_injected_e3nn_equals_eager(tmp_path):
    """The FiLM hooks run during the trace: the exported graph carries the fidelity injection
    (MACEStyle here; NequIPStyle is injected by the same hooks). In a fresh interpreter, as the
    `export` command runs: after a nequip model has been built in a process (other tests build
    them), torch.export specialises this model's atom and edge counts (docs/engines/export.md)."""
    in_fresh_interpreter(export_injected_e3nn, tmp_path, "export")


@pytest.mark.slow
def test_aotinductor_injected_e3nn_equals_eager(tmp_path):
    """The same model compiled by AOTInductor (about a minute): the C++ kernels carry the FiLM.
    (The native M3GNet's compiled export is checked in tests/test_lammps_plugin.py.)"""
    if shutil.which("g++") is None:
        pytest.skip("no C++ compiler (g++): AOTInductor needs one")
    in_fresh_interpreter(export_injected_e3nn, tmp_path, "aotinductor")


def in_fresh_interpreter(check, *args):
    process = mp.get_context("spawn").Process(target=check, args=args)
    process.start()
    process.join()
    assert process.exitcode == 0, "the export check failed in its own process (its traceback is above)"


def export_injected_e3nn(tmp_path, format):
    torch.set_num_threads(1)
    potential = mace_style_potential(["H", "O"], ["PBE", "SCAN"], inject=("embedding", "messages"), **TINY_E3NN).double()
    paths = {name: tmp_path / f"{name}.pt2" for name in ("PBE", "SCAN")}
    export_potential(potential, "SCAN", paths["SCAN"], format=format)
    check_equal(potential, paths["SCAN"], [water_dimer(), water_box(triclinic=True)])
    if format == "aotinductor":
        return
    export_potential(potential, "PBE", paths["PBE"])
    inputs = graph_inputs(potential.graph(water_dimer(), "SCAN"))
    energies = [float(ExportedPotential(path, name)(*inputs)[0]) for name, path in paths.items()]
    assert abs(energies[0] - energies[1]) > 1e-6  # the fidelity is baked in, and it matters


def test_export_fidelity_errors(tmp_path):
    potential = small_potential(["H", "O"], ["PBE", "SCAN"])
    with pytest.raises(UnknownFidelityError, match="unknown fidelity 'r2SCAN'"):
        export_potential(potential, "r2SCAN", tmp_path / "x.pt2")
    path = tmp_path / "pbe.pt2"
    export_potential(potential, "PBE", path)
    with pytest.raises(ValueError, match="export format 'torchscript' is not one of"):
        export_potential(potential, "PBE", tmp_path / "x.pt2", format="torchscript")
    with pytest.raises(ValueError, match="exported at fidelity 'PBE', not 'SCAN'"):
        ExportedPotential(path, "SCAN")
    broken = tmp_path / "broken.pt2"
    broken.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(ValueError, match="not a readable exported potential"):
        ExportedPotential(broken, "PBE")


def test_exported_float32_pretrained_size_model(tmp_path):
    """A float32 model (as the pretrained ones are) exports and agrees to float32 rounding."""
    potential = small_potential(["H", "O"], ["PBE", "SCAN"], dtype=torch.float32)
    path = tmp_path / "f32.pt2"
    export_potential(potential, "PBE", path)
    atoms = water_box()
    energy, forces, _ = ExportedPotential(path, "PBE")(*graph_inputs(potential.graph(atoms, "PBE")))
    reference = eager(potential, atoms, "PBE")
    assert abs(float(energy) - reference[0]) / len(atoms) < 1e-5
    np.testing.assert_allclose(forces.numpy(), reference[1], atol=1e-4)


def test_export_command_and_calculator(water_potential, tmp_path, capsys):
    """`fidelity-adapters export`, then ASE with the exported file equals ASE with the model."""
    from fidelity_adapters.calculator import FidelityCalculator
    from fidelity_adapters.cli import main
    from fidelity_adapters.export import ExportedCalculator
    from fidelity_adapters.serialization import save_potential

    model, out = tmp_path / "water.safetensors", tmp_path / "water_scan.pt2"
    save_potential(water_potential, model)
    assert main(["export", str(model), "--fidelity", "SCAN", "--out", str(out)]) == 0
    assert "at fidelity SCAN" in capsys.readouterr().out
    assert main(["export", str(model), "--fidelity", "CCSD(T)", "--out", str(out)]) == 2
    assert "unknown fidelity 'CCSD(T)'" in capsys.readouterr().err
    atoms, reference = water_box(), water_box()
    atoms.calc = ExportedCalculator(out, "SCAN")
    reference.calc = FidelityCalculator(water_potential, "SCAN")
    assert abs(atoms.get_potential_energy() - reference.get_potential_energy()) < 1e-6 * len(atoms)
    np.testing.assert_allclose(atoms.get_forces(), reference.get_forces(), atol=1e-6)
    np.testing.assert_allclose(atoms.get_stress(), reference.get_stress(), atol=1e-8)


@pytest.mark.slow
def test_exported_sevenn_mf0_equals_eager(tmp_path):
    """SevenNet-MF-0 (float32, through its adapter and the export context that keeps sevenn's
    atom count symbolic) exports at each of its fidelities, and at an added one with a low-rank
    update of its e3nn layers and radial networks (their forward hooks traced into the file),
    and agrees with the eager model on a molecule, a crystal and a triclinic cell. In a fresh
    interpreter, as for the e3nn check."""
    pytest.importorskip("sevenn")
    in_fresh_interpreter(export_sevenn_mf0, tmp_path)


def export_sevenn_mf0(tmp_path):
    from fidelity_adapters.third_party import load_sevenn
    from fidelity_adapters.third_party.sevenn import add_fidelity, add_low_rank_update

    torch.set_num_threads(1)
    potential = add_fidelity(load_sevenn("7net-mf-0"), "SCAN", like="r2SCAN")
    with torch.no_grad():  # as if trained: the update changes SCAN's predictions
        for parameter in add_low_rank_update(potential, "SCAN", rank=2, radial=True).parameters():
            parameter.add_(0.05 * torch.randn_like(parameter))
    energies = []
    for fidelity in potential.fidelities:
        path = tmp_path / f"{fidelity}.pt2"
        export_potential(potential, fidelity, path)
        cases = [water_dimer(), rattled_si(repeat=2, shear=0.0), water_box(triclinic=True)]
        check_equal(potential, path, cases, fidelity, tolerances=(1e-5, 1e-4, 1e-3))  # float32
        energies.append(float(ExportedPotential(path, fidelity)(*graph_inputs(potential.graph(water_dimer(), fidelity)))[0]))
    assert abs(energies[0] - energies[1]) > 1e-3 and abs(energies[0] - energies[2]) > 1e-3  # each file holds its own fidelity
