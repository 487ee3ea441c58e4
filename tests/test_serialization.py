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
    """A smooth potential (cutoffs smooth to second order) conserves energy in Verlet MD, while
    its potential energy swings by far more (so the check measures something)."""
    from ase.md.velocitydistribution import thermalize_momenta

    potential = small_potential(["Si"], ["PBE", "SCAN"], seed=2)
    atoms = rattled_si(repeat=1)
    atoms.calc = FidelityCalculator(potential, "SCAN")
    thermalize_momenta(atoms, 600, rng=np.random.default_rng(0))
    total, potential_energy = [], []
    dyn = VelocityVerlet(atoms, timestep=0.5 * units.fs)
    dyn.attach(lambda: (total.append(atoms.get_total_energy()), potential_energy.append(atoms.get_potential_energy())), interval=5)
    dyn.run(200)
    assert max(total) - min(total) < 1e-3 * len(atoms)
    assert max(potential_energy) - min(potential_energy) > 20 * (max(total) - min(total))


def _rewrite(source, target, edit, digests: str = "recompute", drop_tensors=()):
    """Copy a model file with its metadata edited by `edit(meta)`; digests recomputed (a
    consistent hand-made file), kept (an edit after saving) or dropped (a format-1 file)."""
    import hashlib
    import json

    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    from fidelity_adapters.serialization import DIGESTS_KEY, tensors_digest

    with safe_open(str(source), framework="pt") as handle:
        header = handle.metadata()
    meta = json.loads(header["fidelity_adapters"])
    edit(meta)
    text = json.dumps(meta)
    tensors = {k: v for k, v in load_file(str(source)).items() if k not in drop_tensors}
    new_header = {"fidelity_adapters": text}
    if digests == "recompute":
        new_header[DIGESTS_KEY] = json.dumps({"tensors": tensors_digest(tensors), "metadata": hashlib.sha256(text.encode()).hexdigest()})
    elif digests == "keep":
        new_header[DIGESTS_KEY] = header[DIGESTS_KEY]
    save_file(tensors, str(target), metadata=new_header)


def test_changed_model_files_are_refused(tmp_path):
    """Flipped weight bytes and edited metadata break the SHA-256 digests; a consistent but
    absurd hand-made file is stopped by the range checks before anything is built."""
    path = tmp_path / "model.safetensors"
    save_potential(small_potential(["H", "O"], ["PBE", "SCAN"]), path)
    data = bytearray(path.read_bytes())
    data[-3] ^= 0xFF  # inside the last tensor
    (tmp_path / "flipped.safetensors").write_bytes(bytes(data))
    with pytest.raises(ValueError, match="weights do not match their SHA-256"):
        load_potential(tmp_path / "flipped.safetensors")

    def swap_fidelities(meta):
        meta["fidelities"] = meta["fidelities"][::-1]

    _rewrite(path, tmp_path / "edited.safetensors", swap_fidelities, digests="keep")
    with pytest.raises(ValueError, match="metadata does not match its SHA-256"):
        load_potential(tmp_path / "edited.safetensors")

    for key, value, message in [("n_blocks", 10**6, r"n_blocks = 1000000 is outside \[0, 4096\]"),
                                ("cutoff", 1e6, r"cutoff 1000000.0 A is outside"), ("cutoff", 0.0, "cutoff 0.0 A is outside"),
                                ("node_dim", 32, "weights do not fit the model")]:  # fmt: skip
        _rewrite(path, tmp_path / "crafted.safetensors", lambda meta: meta["backbone_config"].update({key: value}))
        with pytest.raises(ValueError, match=message):
            load_potential(tmp_path / "crafted.safetensors")
    for low_rank in ([["r2SCAN", 2]], [["SCAN", 10**6]], [["SCAN"]]):  # unknown fidelity, absurd rank, no rank
        _rewrite(path, tmp_path / "crafted.safetensors", lambda meta: meta.update(low_rank=low_rank))
        with pytest.raises(ValueError, match="low_rank .* must list"):
            load_potential(tmp_path / "crafted.safetensors")


def test_format_1_file_loads_with_a_warning(tmp_path):
    potential = small_potential(["H", "O"], ["PBE", "SCAN"])
    path = tmp_path / "model.safetensors"
    save_potential(potential, path)
    _rewrite(path, tmp_path / "old.safetensors", lambda meta: meta.update({"format_version": 1}), digests="drop",
             drop_tensors=("fidelity_state.reference_span",))  # fmt: skip
    with pytest.warns(UserWarning, match="without SHA-256 digests"):
        old = load_potential(tmp_path / "old.safetensors")
    assert torch.equal(old.fidelity_state.embedding.weight, potential.fidelity_state.embedding.weight)
