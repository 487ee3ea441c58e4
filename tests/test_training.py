"""Training: the loss falls, masks missing labels, options take effect, runs resume, and
checkpoints are atomic and checked on load."""

import json

import numpy as np
import pytest
import torch
from torch_geometric.data import Batch

from conftest import emt_cu_cells, high_level, labelled, small_potential
from fidelity_adapters import train, training
from fidelity_adapters.training import TrainConfig, _loss, _loss_terms, load_checkpoint


def emt_structures(n=24, seed=0):
    """Cu cells, every third labelled 'hi', the others 'lo' (no geometry at both)."""
    out = []
    for k, (atoms, energy, forces) in enumerate(emt_cu_cells(n, seed)):
        fidelity = "lo" if k % 3 else "hi"
        if fidelity == "hi":
            energy, forces = high_level(energy, forces, len(atoms))
        out.append(labelled(atoms, fidelity, energy, forces, f"emt {k}"))
    return out


def cu_potential(seed=0, dtype=torch.float64):
    """Short cutoffs keep the fcc neighbour shells (12 within 3 A) and these tests fast."""
    return small_potential(["Cu"], ["lo", "hi"], dtype=dtype, seed=seed, cutoff=3.0, three_body_cutoff=2.8)


def quick(**options):
    return TrainConfig(**{"max_epochs": 6, "batch_size": 4, "progress": False, **options})


def test_loss_falls():
    data = emt_structures()
    potential = cu_potential(dtype=torch.float32)
    result = train(potential, data[:18], data[18:], quick(learning_rate=3e-3))
    losses = [h["loss"] for h in result.history]
    assert min(losses[1:]) < losses[0]
    assert {"lo/force_mae", "hi/force_mae", "hi/energy_mae_per_atom"} <= set(result.history[-1])


def test_missing_labels_are_masked():
    data = emt_structures(6)
    data[0].energy = float("nan")  # forces only
    data[1].forces = None  # energy only
    potential = cu_potential()
    potential.fit_references(data)
    batch = Batch.from_data_list([potential.graph(s) for s in data])
    terms = _loss_terms(potential, batch, quick(), training=False)
    assert int(terms["e_n"]) == 5
    assert int(terms["f_n"]) == 3 * (sum(len(s) for s in data) - len(data[1]))
    assert torch.isfinite(_loss(terms, quick()))


def test_force_and_stress_weights_take_effect():
    data = emt_structures(4)
    for s in data:
        s.stress = np.eye(3) * 0.01
    potential = cu_potential()
    batch = Batch.from_data_list([potential.graph(s) for s in data])
    plain = float(_loss(_loss_terms(potential, batch, quick(), False), quick()))
    no_forces = float(_loss(_loss_terms(potential, batch, quick(force_weight=0.0), False), quick(force_weight=0.0)))
    with_stress = quick(stress_weight=10.0)
    stressed = float(_loss(_loss_terms(potential, batch, with_stress, False), with_stress))
    assert no_forces < plain < stressed


def test_stress_training_with_a_molecule_in_the_batch_keeps_the_weights_finite():
    from ase import Atoms

    bulk_cells = emt_structures(3)
    for s in bulk_cells:
        s.stress = np.eye(3) * 0.01
    dimer = labelled(Atoms("Cu2", positions=[[0, 0, 0], [0, 0, 2.4]]), "lo", -1.0, np.zeros((2, 3)), "Cu2 molecule")
    assert not dimer.pbc.any() and dimer.stress is None
    potential = cu_potential()
    result = train(potential, bulk_cells + [dimer], bulk_cells[:1], quick(max_epochs=1, stress_weight=1.0, batch_size=4))
    assert np.isfinite(result.history[-1]["loss"])
    assert all(torch.isfinite(p).all() for p in potential.parameters())
    out = potential(potential.graph(dimer), stress=True)
    assert torch.isnan(out["stress"]).all() and torch.isfinite(out["forces"]).all()


def test_forces_are_skipped_when_they_cannot_count(monkeypatch):
    """Energy-only batches (CASPT2-like) and force_weight 0 ask the potential for energies only,
    and the loss is then the same whatever the force labels say."""
    data = emt_structures(4)
    potential = cu_potential()
    potential.fit_references(data)
    asked = []
    forward = type(potential).forward
    def recording(self, batch, forces=True, **options):
        asked.append(forces)
        return forward(self, batch, forces, **options)

    monkeypatch.setattr(type(potential), "forward", recording)
    batch = Batch.from_data_list([potential.graph(s) for s in data])
    with_forces = _loss(_loss_terms(potential, batch, quick(), training=False), quick())
    ignored = _loss(_loss_terms(potential, batch, quick(force_weight=0.0), training=False), quick(force_weight=0.0))
    batch.forces = batch.forces + 100.0
    still_ignored = _loss(_loss_terms(potential, batch, quick(force_weight=0.0), training=False), quick(force_weight=0.0))
    batch.forces = torch.full_like(batch.forces, float("nan"))
    energy_only = _loss_terms(potential, batch, quick(), training=False)
    assert asked == [True, False, False, False]
    assert float(with_forces) > float(ignored) == pytest.approx(float(still_ignored))
    assert int(energy_only["f_n"]) == 0 and float(_loss(energy_only, quick())) == pytest.approx(float(ignored))


def test_monitor_picks_validation_fidelity():
    data = emt_structures()
    potential = cu_potential()
    with pytest.raises(ValueError, match="monitored fidelity 'hi' has no validation"):
        train(potential, data, [s for s in data if s.fidelity == "lo"], quick(monitor="hi"))
    only_hi = train(potential, data[:18], data[18:], quick(max_epochs=1, monitor="hi"))
    all_fid = train(cu_potential(), data[:18], data[18:], quick(max_epochs=1))
    assert only_hi.history[0]["loss"] != pytest.approx(all_fid.history[0]["loss"])


def test_early_stopping_patience():
    data = emt_structures()
    result = train(cu_potential(), data[:18], data[18:], quick(max_epochs=30, patience=0, learning_rate=0.5))
    assert len(result.history) < 30


def test_killed_run_resumes_where_it_stopped(tmp_path, monkeypatch):
    data = emt_structures()
    straight = cu_potential(seed=1)
    train(straight, data[:18], data[18:], quick(max_epochs=4), out_dir=tmp_path / "straight")

    real_save, saved = training.save_checkpoint, []

    def killed_after_two_epochs(path, state):
        real_save(path, state)
        saved.append(json.loads(state["history"]))
        if len(saved) == 2:
            raise KeyboardInterrupt

    monkeypatch.setattr(training, "save_checkpoint", killed_after_two_epochs)
    with pytest.raises(KeyboardInterrupt):
        train(cu_potential(seed=1), data[:18], data[18:], quick(max_epochs=4), out_dir=tmp_path / "split")
    monkeypatch.undo()
    fresh = cu_potential(seed=99)  # a new process: different init, must not matter
    result = train(fresh, data[:18], data[18:], quick(max_epochs=4), out_dir=tmp_path / "split")
    assert [h["epoch"] for h in result.history] == [0, 1, 2, 3]
    before_the_kill = [h["seconds"] for h in saved[-1]]  # the killed process's epoch times count too
    assert [h["seconds"] for h in result.history[:2]] == before_the_kill and min(before_the_kill) > 0
    assert result.training_seconds == pytest.approx(sum(h["seconds"] for h in result.history))
    for a, b in zip(straight.state_dict().values(), fresh.state_dict().values()):
        torch.testing.assert_close(a, b)
    assert (tmp_path / "split" / "best_model.safetensors").exists()
    with pytest.raises(ValueError, match="max_epochs: 4 -> 8"):
        train(fresh, data[:18], data[18:], quick(max_epochs=8), out_dir=tmp_path / "split")


def test_resume_refuses_other_data_split_or_fidelity_order(tmp_path):
    data = emt_structures()
    out = tmp_path / "run"
    train(cu_potential(), data[:18], data[18:], quick(max_epochs=1), out_dir=out)
    with pytest.raises(ValueError, match="training data"):  # other data
        train(cu_potential(), data[:17], data[18:], quick(max_epochs=1), out_dir=out)
    with pytest.raises(ValueError, match="validation data"):  # same data, other split
        train(cu_potential(), data[:16] + data[18:20], data[16:18] + data[20:], quick(max_epochs=1), out_dir=out)
    swapped = small_potential(["Cu"], ["hi", "lo"], cutoff=3.0, three_body_cutoff=2.8)
    with pytest.raises(ValueError, match=r"fidelities: \['lo', 'hi'\] -> \['hi', 'lo'\]"):
        train(swapped, data[:18], data[18:], quick(max_epochs=1), out_dir=out)
    three = small_potential(["Cu"], ["lo", "hi", "x"], cutoff=3.0, three_body_cutoff=2.8)
    with pytest.raises(ValueError, match="belongs to another run"):  # another fidelity set: no state_dict traceback
        train(three, data[:18], data[18:], quick(max_epochs=1), out_dir=out)
    resumed = train(cu_potential(), data[:18], data[18:], quick(max_epochs=1), out_dir=out)
    assert [h["epoch"] for h in resumed.history] == [0]  # the same run resumes (here: already finished)


def test_resume_after_a_library_upgrade_warns_and_goes_on(tmp_path):
    """A checkpoint of a wrapped sevenn/mace/nequip model records the library version in its
    model config; another version resumes with a warning naming both, anything else still refuses."""
    saved = {"fidelities": ["PBE"], "model": {"backbone": "SevennBackbone",
                                              "backbone_config": {"library": "sevenn", "version": "0.12.1", "sevenn": {"checkpoint": "7net-0"}}}}  # fmt: skip
    upgraded = json.loads(json.dumps(saved))
    upgraded["model"]["backbone_config"]["version"] = "0.13.0"
    with pytest.warns(UserWarning, match="written with sevenn 0.12.1; resuming with sevenn 0.13.0"):
        training._check_same_run(tmp_path / "checkpoint.pt", saved, upgraded)
    assert saved["model"]["backbone_config"]["version"] == "0.12.1"  # the fingerprints are left as they were
    del saved["model"]["backbone_config"]["version"]  # a checkpoint from before versions were recorded
    with pytest.warns(UserWarning, match="written with a library version it did not record; resuming with sevenn 0.13.0"):
        training._check_same_run(tmp_path / "checkpoint.pt", saved, upgraded)
    upgraded["model"]["backbone_config"]["sevenn"]["checkpoint"] = "7net-l3i5"
    with pytest.raises(ValueError, match="belongs to another run"), pytest.warns(UserWarning):
        training._check_same_run(tmp_path / "checkpoint.pt", saved, upgraded)


def test_a_second_run_into_a_held_directory_is_refused_naming_the_holder(tmp_path):
    import os

    data = emt_structures()
    with training.run_lock(tmp_path / "run"):
        with pytest.raises(ValueError, match=f"in use by another run \\(pid {os.getpid()} on "):
            train(cu_potential(), data[:18], data[18:], quick(max_epochs=1), out_dir=tmp_path / "run")
        assert not (tmp_path / "run" / "checkpoint.pt").exists()
    train(cu_potential(), data[:18], data[18:], quick(max_epochs=1), out_dir=tmp_path / "run")  # free again
    assert (tmp_path / "run" / "checkpoint.pt").exists() and not (tmp_path / "run" / ".run.lock.owner").exists()


def test_corrupt_checkpoint_is_reported(tmp_path):
    data = emt_structures(8)
    (tmp_path / "checkpoint.pt").write_bytes(b"\x00not a checkpoint" * 10)
    with pytest.raises(ValueError, match="checkpoint.pt: training checkpoint is corrupt"):
        train(cu_potential(), data, data, quick(max_epochs=1), out_dir=tmp_path)


def test_checkpoint_write_is_atomic(tmp_path, monkeypatch):
    data = emt_structures(8)
    real_save = training.save_checkpoint

    def killed_after_first_epoch(path, state):
        real_save(path, state)
        raise KeyboardInterrupt

    monkeypatch.setattr(training, "save_checkpoint", killed_after_first_epoch)
    with pytest.raises(KeyboardInterrupt):
        train(cu_potential(), data, data, quick(max_epochs=3), out_dir=tmp_path)
    monkeypatch.undo()
    before = (tmp_path / "checkpoint.pt").read_bytes()

    def crash_mid_write(obj, path):
        with open(path, "wb") as handle:
            handle.write(b"half a file")
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", crash_mid_write)
    with pytest.raises(KeyboardInterrupt):
        train(cu_potential(), data, data, quick(max_epochs=3), out_dir=tmp_path)
    assert (tmp_path / "checkpoint.pt").read_bytes() == before
    assert load_checkpoint(tmp_path / "checkpoint.pt")["epoch"] == 0
    assert not list(tmp_path.glob(".*.tmp"))


def _offset_per_atom(potential, structures, fidelity):
    """The per-atom energy offset a least-squares reference refit would remove (one element:
    sum n (predicted - true) / sum n^2)."""
    chosen = [s for s in structures if s.fidelity == fidelity]
    predicted = potential.predict(chosen, fidelity)
    n = np.array([len(s) for s in chosen], dtype=float)
    error = np.array([p["energy"] - s.energy for s, p in zip(chosen, predicted)])
    return float(n @ error / (n @ n))


def test_refit_references_removes_the_training_offset_and_survives_a_resume(tmp_path):
    from fidelity_adapters.serialization import load_potential

    data = emt_structures()
    plain = cu_potential()
    train(plain, data[:18], data[18:], quick(max_epochs=2), out_dir=tmp_path / "run")
    offsets = [abs(_offset_per_atom(plain, data[:18], name)) for name in ("lo", "hi")]
    assert min(offsets) > 1e-4  # trained on a force-dominated loss, the mean energy is off
    refitted = cu_potential()  # resumes the finished run: no epoch left, the refit is what changes
    result = train(refitted, data[:18], data[18:], quick(max_epochs=2, refit_references=True), out_dir=tmp_path / "run")
    assert [h["epoch"] for h in result.history] == [0, 1]
    for name in ("lo", "hi"):
        assert abs(_offset_per_atom(refitted, data[:18], name)) < 1e-9
    saved = load_potential(tmp_path / "run" / "best_model.safetensors")
    np.testing.assert_allclose(saved.predict(data[18:], "hi")[0]["energy"], refitted.predict(data[18:], "hi")[0]["energy"])


def test_refit_around_the_network_keeps_references_of_a_fidelity_it_has_no_energies_for():
    data = emt_structures()
    potential = cu_potential()
    potential.fit_references(data)
    lo_before = potential.fidelity_state.elemental_energies[0].clone()
    potential.fit_references([s for s in data if s.fidelity == "hi"], refit_scale=False, around_network=True)
    torch.testing.assert_close(potential.fidelity_state.elemental_energies[0], lo_before)
    assert abs(_offset_per_atom(potential, data, "hi")) < 1e-9


def test_refit_around_the_network_moves_references_only_along_the_refit_compositions():
    """A model whose references know H, C and O (fitted on H2O, CH4, CO2 and H2) refitted on
    water alone, as a pretrained model is refitted on a user's water: the water energies become
    unbiased, C's reference stays, and the references change only along water's composition
    (H:O = 2:1), so what they said about other ratios is kept, not replaced by water's
    minimum-norm split."""
    from ase.build import molecule

    potential = small_potential(["H", "C", "O"], ["lo"])
    rng = np.random.default_rng(0)
    frames = [(name, molecule(name)) for name in ("H2O", "CH4", "CO2", "H2") for _ in range(2)]
    for _, atoms in frames:
        atoms.rattle(0.05, seed=int(rng.integers(1000)))
    energy = {"H": -13.6, "C": -1030.0, "O": -2040.0}
    first = [labelled(a, "lo", sum(energy[x] for x in a.get_chemical_symbols()) + rng.normal(0, 0.01),
                      np.zeros((len(a), 3)), f"{name} {k}") for k, (name, a) in enumerate(frames)]  # fmt: skip
    potential.fit_references(first)
    before = potential.fidelity_state.elemental_energies[0].clone()
    waters = [labelled(a, "lo", s.energy + 1.0, np.zeros((len(a), 3)), f"water {k}")
              for k, ((name, a), s) in enumerate(zip(frames, first)) if name == "H2O"]  # fmt: skip
    bias = lambda: np.mean([p["energy"] - s.energy for p, s in zip(potential.predict(waters, "lo"), waters)])  # noqa: E731
    assert abs(bias()) > 0.5  # the 1 eV shift and the network's output: the test can fail
    potential.fit_references(waters, refit_scale=False, around_network=True)
    assert bias() == pytest.approx(0.0, abs=1e-9)
    change = (potential.fidelity_state.elemental_energies[0] - before).numpy()
    water = np.array([2.0, 0.0, 1.0])  # H, C, O
    assert change[1] == 0.0  # C is not in the water
    np.testing.assert_allclose(change - water * (change @ water) / (water @ water), 0.0, atol=1e-9)


def test_training_leaves_the_callers_random_state_and_float64_models_are_float64_throughout():
    data = emt_structures(12)
    potential = cu_potential()
    assert {p.dtype for p in potential.parameters()} == {torch.float64}  # the fidelity embedding too
    torch.manual_seed(123)
    before = torch.get_rng_state()
    train(potential, data[:9], data[9:], TrainConfig(max_epochs=1, batch_size=4, progress=False))
    assert torch.equal(torch.get_rng_state(), before)
