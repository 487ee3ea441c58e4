"""Saved models keep weights, references and fidelity names; bad files are reported."""

import numpy as np
import pytest
import torch
from ase.md.verlet import VelocityVerlet
from ase import units

from conftest import rattled_si, small_potential, water_dimer
from fidelity_adapters import FidelityCalculator, load_potential, save_potential
from fidelity_adapters.serialization import read_metadata


def outputs(potential, atoms, fidelity):
    out = potential(potential.graph(atoms, fidelity), forces=True, stress=True)
    return {k: v.detach() for k, v in out.items()}


def test_round_trip_gives_identical_outputs(tmp_path):
    potential = small_potential(["Si"], ["PBE", "SCAN"])
    potential.fidelity_state.set_references(np.array([[-5.4], [-9.9]]), 0.7)
    save_potential(potential, tmp_path / "model.safetensors")
    loaded = load_potential(tmp_path / "model.safetensors")
    assert loaded.fidelities == ["PBE", "SCAN"] and loaded.elements == [14]
    assert loaded.dtype == torch.float64
    atoms = rattled_si()
    for fidelity in ("PBE", "SCAN"):
        a, b = outputs(potential, atoms, fidelity), outputs(loaded, atoms, fidelity)
        for key in a:
            torch.testing.assert_close(a[key], b[key], rtol=0, atol=0)
    meta = read_metadata(tmp_path / "model.safetensors")
    assert meta["backbone"] == "M3GNet" and meta["fidelities"] == ["PBE", "SCAN"]


def test_model_files_and_checkpoints_get_the_same_usual_permissions(tmp_path):
    import os

    from fidelity_adapters.serialization import atomic_write

    umask = os.umask(0o022)
    try:
        save_potential(small_potential(["Si"], ["PBE", "SCAN"]), tmp_path / "model.safetensors")
        atomic_write(tmp_path / "checkpoint.pt", lambda tmp: torch.save({"a": 1}, tmp))
    finally:
        os.umask(umask)
    modes = {name: (tmp_path / name).stat().st_mode & 0o777 for name in ("model.safetensors", "checkpoint.pt")}
    assert modes == {"model.safetensors": 0o644, "checkpoint.pt": 0o644}


def test_truncated_model_file_is_reported(tmp_path):
    potential = small_potential(["Si"], ["PBE", "SCAN"])
    save_potential(potential, tmp_path / "model.safetensors")
    data = (tmp_path / "model.safetensors").read_bytes()
    (tmp_path / "cut.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="cut.safetensors"):
        load_potential(tmp_path / "cut.safetensors")
    (tmp_path / "junk.safetensors").write_bytes(b"\x00" * 100)
    with pytest.raises(ValueError, match="not a readable fidelity-adapters model file"):
        load_potential(tmp_path / "junk.safetensors")
    with pytest.raises(FileNotFoundError):
        load_potential(tmp_path / "absent.safetensors")


def test_calculator_uses_the_named_fidelity(tmp_path):
    potential = small_potential(["H", "O"], ["PBE", "SCAN"])
    save_potential(potential, tmp_path / "m.safetensors")
    energies = {}
    for fidelity in ("PBE", "SCAN"):
        atoms = water_dimer()
        atoms.calc = FidelityCalculator.from_file(tmp_path / "m.safetensors", fidelity)
        energies[fidelity] = atoms.get_potential_energy()
        assert atoms.get_forces().shape == (6, 3)
    assert energies["PBE"] != pytest.approx(energies["SCAN"], abs=1e-8)


def test_short_nve_conserves_energy():
    """A smooth potential (cutoffs smooth to second order) conserves energy in Verlet MD."""
    potential = small_potential(["Si"], ["PBE", "SCAN"], seed=2)
    atoms = rattled_si(repeat=1)
    atoms.calc = FidelityCalculator(potential, "SCAN")
    from ase.md.velocitydistribution import MaxwellBoltzmannDistribution

    MaxwellBoltzmannDistribution(atoms, temperature_K=600, rng=np.random.default_rng(0))
    total = []
    dyn = VelocityVerlet(atoms, timestep=0.5 * units.fs)
    dyn.attach(lambda: total.append(atoms.get_total_energy()), interval=5)
    dyn.run(200)
    assert max(total) - min(total) < 1e-3 * len(atoms)
