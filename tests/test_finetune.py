"""Fine-tuning a pretrained potential at a new fidelity with replay (fidelity_adapters.finetune),
and the per-fidelity loss weights it relies on. Small water clusters from the bundled data,
one or two epochs: these check that each option takes effect, not accuracy."""

from __future__ import annotations

import json

import ase.io
import numpy as np
import pytest
import torch
from torch_geometric.data import Batch

from fidelity_adapters import cli
from fidelity_adapters.bundled import water_clusters
from fidelity_adapters.finetune import FinetuneConfig, finetune
from fidelity_adapters.pretrained import entry
from fidelity_adapters.training import TrainConfig, _loss_terms

from conftest import small_potential

PBE_MODEL = "matgl:M3GNet-MatPES-PBE-v2025.1"
needs_matgl_weights = pytest.mark.skipif(entry(PBE_MODEL).locate()[0] is None, reason="matgl MatPES weights not found")


@pytest.fixture(scope="module")
def clusters():
    data = water_clusters()
    return [s for s in data if s.fidelity == "SCAN"][:10], [s for s in data if s.fidelity == "PBE"][:10]


def _quick(**options) -> FinetuneConfig:
    return FinetuneConfig(train=TrainConfig(max_epochs=1, learning_rate=1e-3, batch_size=4, progress=False), **options)


def test_fidelity_weights_scale_each_fidelitys_squared_errors(clusters):
    scan, pbe = clusters
    potential = small_potential(["H", "O"], ["PBE", "SCAN"])
    potential.fit_references(scan + pbe)
    batch = Batch.from_data_list([potential.graph(s) for s in scan[:2] + pbe[:2]])
    parts = {
        name: _loss_terms(potential, Batch.from_data_list([potential.graph(s) for s in group]), TrainConfig(), False)
        for name, group in (("SCAN", scan[:2]), ("PBE", pbe[:2]))
    }
    weighted = _loss_terms(potential, batch, TrainConfig(fidelity_weights={"PBE": 0.25}), False)
    for key in ("e_se", "f_se"):
        expected = parts["SCAN"][key] + 0.25 * parts["PBE"][key]
        assert float(weighted[key]) == pytest.approx(float(expected), rel=1e-10)
    assert float(weighted["e_n"]) == float(parts["SCAN"]["e_n"] + parts["PBE"]["e_n"])  # counts unweighted


@needs_matgl_weights
def test_distillation_replays_the_pretrained_model_and_reports_forgetting(clusters):
    scan, _ = clusters
    result = finetune(PBE_MODEL, "SCAN", scan[:6], scan[6:9], _quick(replay="distill"))
    report = result.report
    assert result.potential.fidelities == ["PBE", "SCAN"]
    assert report["n_replay_train"] == 6 and report["n_base_held_out"] >= 1
    assert report["before"]["base_held_out"]["force_mae"] < 1e-5  # its own labels, before training
    assert report["after"]["base_held_out"]["force_mae"] > 1e-5  # training moved the shared network
    assert report["zero_shot"]["target_val"]["energy_mae_per_atom"] > 100  # another code's energy zero ...
    assert report["before"]["target_val"]["energy_mae_per_atom"] < 0.1  # ... removed by the reference correction
    assert report["optimizer_steps"] == 3  # 12 structures, batches of 4, one epoch


@needs_matgl_weights
def test_replay_weight_zero_gives_the_replay_no_say(clusters):
    scan, pbe = clusters
    runs = [finetune(PBE_MODEL, "SCAN", scan[:4], scan[4:6], _quick(replay="data", replay_weight=w), replay_structures=pbe)
            for w in (0.0, 1.0)]  # fmt: skip
    without = finetune(PBE_MODEL, "SCAN", scan[:4], scan[4:6], _quick(replay="none"))
    after = [r.report["after"]["target_val"]["force_mae"] for r in runs]
    assert after[0] != pytest.approx(after[1], rel=1e-6)  # the weight takes effect
    assert runs[0].report["n_replay_train"] == 4 and without.report["n_replay_train"] == 0
    # without replay the base level is still measured, on self-labelled rattled copies, and it moved
    assert without.report["n_base_held_out"] == 1 and without.report["after"]["base_held_out"]["force_mae"] > 1e-5


@needs_matgl_weights
def test_adapter_training_leaves_the_pretrained_interactions_alone(clusters):
    scan, _ = clusters
    result = finetune(PBE_MODEL, "SCAN", scan[:4], scan[4:6], _quick(replay="none", trainable="adapter"))
    from fidelity_adapters.pretrained import load_pretrained

    original = load_pretrained(PBE_MODEL, add=["SCAN"]).backbone
    tuned = result.potential.backbone
    assert torch.equal(tuned.three_body[0].atom_gate[0].weight, original.three_body[0].atom_gate[0].weight)
    first, first0 = tuned.blocks[1].node_update.value[0].weight, original.blocks[1].node_update.value[0].weight
    assert torch.equal(first[:, :-16], first0[:, :-16])  # pretrained columns kept
    assert not torch.equal(first[:, -16:], first0[:, -16:])  # state columns trained
    assert not torch.equal(tuned.readouts[0].value[0].weight, original.readouts[0].value[0].weight)


@needs_matgl_weights
def test_lowrank_training_moves_each_weight_within_its_rank(clusters):
    """trainable="lowrank": every linear weight of the backbone changes by a matrix of rank at
    most `rank` (frozen W plus a trained B A, merged into plain weights at the end), and the
    result saves and reloads as an ordinary model."""
    from fidelity_adapters.low_rank import has_low_rank_updates
    from fidelity_adapters.pretrained import load_pretrained

    scan, _ = clusters
    torch.manual_seed(0)  # the new state path's layers start random: the same draw for both
    result = finetune(PBE_MODEL, "SCAN", scan[:4], scan[4:6], _quick(replay="none", trainable="lowrank", rank=2))
    torch.manual_seed(0)
    original = load_pretrained(PBE_MODEL, add=["SCAN"]).backbone
    tuned = result.potential.backbone
    assert not has_low_rank_updates(tuned)
    changes = [tuned.get_submodule(name).weight - layer.weight for name, layer in original.named_modules() if isinstance(layer, torch.nn.Linear)]
    assert len(changes) > 20
    # float32 weights: W + B A is rounded by about 1e-7 |W| per element, so count singular values above that noise
    ranks = [int(torch.linalg.matrix_rank(c.double(), atol=64 * torch.finfo(torch.float32).eps * 2)) for c in changes]
    assert max(ranks) == 2 and sum(r > 0 for r in ranks) > len(ranks) // 2


@needs_matgl_weights
def test_bad_requests_are_named(clusters):
    scan, pbe = clusters
    with pytest.raises(ValueError, match="needs base-level"):
        finetune(PBE_MODEL, "SCAN", scan[:4], scan[4:6], _quick(replay="data"))
    with pytest.raises(ValueError, match="not one of"):
        finetune(PBE_MODEL, "SCAN", scan[:4], scan[4:6], _quick(), base_fidelity="r2SCAN")
    with pytest.raises(ValueError, match="all at the target"):
        finetune(PBE_MODEL, "SCAN", scan[:4] + pbe[:1], scan[4:6], _quick())
    with pytest.raises(ValueError, match="replay must be"):
        finetune(PBE_MODEL, "SCAN", scan[:4], scan[4:6], _quick(replay="sometimes"))
    with pytest.raises(ValueError, match="must differ from the base fidelity 'PBE'"):
        finetune(PBE_MODEL, "PBE", pbe[:4], pbe[4:6], _quick(replay="none", trainable="lowrank-target"))
    with pytest.raises(ValueError, match="radial=True extends a SevenNet's target update"):
        finetune(PBE_MODEL, "SCAN", scan[:4], scan[4:6], _quick(replay="none", trainable="lowrank-target", radial=True))
    with pytest.raises(ValueError, match="self_connections=False keeps a SevenNet's target update"):
        finetune(PBE_MODEL, "SCAN", scan[:4], scan[4:6], _quick(replay="none", trainable="lowrank-target", self_connections=False))


@needs_matgl_weights
def test_cli_finetune_uses_base_frames_as_replay(clusters, tmp_path, capsys):
    scan, pbe = clusters
    path = tmp_path / "data.extxyz"
    frames = [s.to_atoms() for s in scan[:6] + pbe[:4]]
    for atoms, s in zip(frames, scan[:6] + pbe[:4]):
        atoms.info["energy"] = s.energy
        atoms.arrays["forces"] = s.forces
    ase.io.write(path, frames)
    out = tmp_path / "run"
    command = ["finetune", str(path), "--from", PBE_MODEL, "--target", "SCAN", "--out", str(out), "--epochs", "1", "--max-atoms", "1"]
    assert cli.main(command) == 0
    printed = capsys.readouterr().out
    report = json.loads((out / "finetune_report.json").read_text())
    assert "replay data" in printed
    assert f"{report['optimizer_steps']} steps, {report['training_seconds']:.0f} s of training" in printed
    assert report["n_replay_train"] == 3 and report["n_base_held_out"] == 1  # a fifth of the replay held out
    assert report["optimizer_steps"] == report["n_target_train"] + report["n_replay_train"]  # one structure per batch
    assert report["settings"]["device"] == "cpu"  # --device's default reaches the config
    assert np.isfinite(report["after"]["target_val"]["force_mae"])
    assert (out / "model.safetensors").exists()
    radial = ["finetune", str(path), "--from", PBE_MODEL, "--target", "SCAN", "--out", str(tmp_path / "r"), "--radial"]
    assert cli.main(radial) == 2  # --radial reaches the config, which refuses it on a matgl model
    assert "radial=True extends a SevenNet's" in capsys.readouterr().err
    assert cli.main([*radial[:-1], "--no-self-connections"]) == 2  # reaches the config too
    assert "self_connections=False keeps a SevenNet's" in capsys.readouterr().err
    if not torch.cuda.is_available():
        assert cli.main([*radial[:-1], "--device", "cuda"]) == 2
        assert "--device cuda: no CUDA device is available here" in capsys.readouterr().err


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal where CUDA is absent")
def test_finetune_on_cuda_where_there_is_none_is_an_error(clusters):
    scan, _ = clusters
    with pytest.raises(ValueError, match="device cuda: no CUDA device is available here"):
        finetune(PBE_MODEL, "SCAN", scan[:4], scan[4:6], _quick(device="cuda"))


@pytest.mark.parametrize("device", ["tpu", "mps", "cuda:x"])
def test_finetune_on_a_device_that_is_not_one_is_an_error(clusters, device):
    scan, _ = clusters
    with pytest.raises(ValueError, match=f"device '{device}': give cpu, cuda or cuda:N"):
        finetune(PBE_MODEL, "SCAN", scan[:4], scan[4:6], _quick(device=device))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@needs_matgl_weights
@pytest.mark.parametrize("name, options", [(PBE_MODEL, dict(replay="distill")), ("sevenn:7net-mf-0", dict(replay="none", trainable="adapter"))])
def test_finetune_on_cuda_starts_as_on_cpu_and_trains(clusters, name, options):
    """Fine-tuning with device="cuda" trains the model on the GPU from the CPU's starting point
    (predictions equal to float32 rounding) to about where the CPU gets. After 3 float32 Adam
    steps the two differed by 2-3 % in validation error on an H200 (two CPUs: 0.3 %), not to
    rounding (likely Adam's first steps, which move a weight by about lr whatever the size of its
    gradient; not investigated), so the end is compared to 10 %."""
    if name.startswith("sevenn"):
        pytest.importorskip("sevenn", reason="sevenn is not installed (pip install -e '.[sevenn]')")
    scan, _ = clusters
    runs = {device: finetune(name, "SCAN", scan[:6], scan[6:9], _quick(device=device, **options)) for device in ("cpu", "cuda")}
    assert next(runs["cuda"].potential.parameters()).device.type == "cuda"
    for key in ("energy_mae_per_atom", "force_mae"):
        assert runs["cuda"].report["before"]["target_val"][key] == pytest.approx(runs["cpu"].report["before"]["target_val"][key], rel=1e-3)
    before, after = runs["cuda"].report["before"]["target_val"], runs["cuda"].report["after"]["target_val"]
    assert after["force_mae"] != before["force_mae"]  # it trained
    for key in ("energy_mae_per_atom", "force_mae"):
        assert after[key] == pytest.approx(runs["cpu"].report["after"]["target_val"][key], rel=0.1)


def test_finetune_sevenn_mf0_saves_and_reloads(clusters, tmp_path):
    """SevenNet-MF-0 fine-tuned at a new fidelity (a copied r2SCAN modality) with distilled
    replay, saved by `finetune` and reloaded with the same predictions at every fidelity."""
    pytest.importorskip("sevenn", reason="sevenn is not installed (pip install -e '.[sevenn]')")
    from fidelity_adapters.serialization import load_potential

    scan, _ = clusters
    result = finetune("sevenn:7net-mf-0", "SCAN", scan[:4], scan[4:6], _quick(replay="distill", replay_ratio=0.5), out_dir=tmp_path)
    potential = result.potential
    assert potential.fidelities == ["r2SCAN", "PBE", "SCAN"]
    assert result.report["after"]["base_held_out"]["force_mae"] > 0  # training moved the shared network
    reloaded = load_potential(tmp_path / "model.safetensors")
    saved, loaded = potential.state_dict(), reloaded.state_dict()
    assert all(torch.equal(saved[k], loaded[k]) for k in saved)  # the fine-tuned weights, bit for bit
    structure = scan[7]
    for fidelity in potential.fidelities:  # float32: equal up to the order of summation
        want, got = potential.predict([structure], fidelity)[0], reloaded.predict([structure], fidelity)[0]
        assert got["energy"] == pytest.approx(want["energy"], rel=1e-6)
        np.testing.assert_allclose(got["forces"], want["forces"], rtol=1e-5, atol=1e-5)


def test_sevenn_adapter_trains_a_low_rank_update_and_keeps_the_base_exactly(clusters):
    """trainable="adapter" on SevenNet-MF-0 (radial=True: the radial networks' updates too;
    self_connections=False: not the skip paths', which the default updates, test_sevenn.py):
    only the target's low-rank update trains (every pretrained weight as loaded), the target's
    error changes, and the base level does not drift at all, even without replay."""
    pytest.importorskip("sevenn", reason="sevenn is not installed (pip install -e '.[sevenn]')")
    from fidelity_adapters.pretrained import load_pretrained

    scan, _ = clusters
    result = finetune("sevenn:7net-mf-0", "SCAN", scan[:4], scan[4:6], _quick(replay="none", trainable="adapter", rank=2, radial=True, self_connections=False))
    report, tuned = result.report, result.potential.backbone
    # the base level is the pretrained model's: float32 summation order apart (2e-7 eV/A on 2 threads), against
    # tens of meV/A when the shared weights train
    assert report["after"]["base_held_out"]["force_mae"] < 1e-5
    assert report["after"]["target_val"]["force_mae"] != report["before"]["target_val"]["force_mae"]
    original = load_pretrained("sevenn:7net-mf-0", add=["SCAN"]).backbone.model.state_dict()
    assert all(torch.equal(value, original[key]) for key, value in tuned.model.state_dict().items())
    (update,) = tuned.fidelity_updates
    assert update.rank == 2 and any(p.abs().sum() > 0 for p in update.updates[0].b)  # B moved from zero
    assert len(update.updates) == 13  # self_connections=False: the modal layers' and the embedding's only
    assert len(update.radial_updates) == 5 and all(u.b.abs().sum() > 0 for u in update.radial_updates)  # radial=True trained
    with pytest.raises(ValueError, match="would do nothing with trainable='adapter'"):
        finetune("sevenn:7net-mf-0", "SCAN", scan[:4], scan[4:6], _quick(replay="distill", trainable="adapter"))


@needs_matgl_weights
def test_target_low_rank_update_keeps_the_base_level_of_a_matgl_m3gnet_exactly(clusters):
    """trainable="lowrank-target" on the MatPES M3GNet: only the SCAN update trains, the PBE
    level on held-out structures is the pretrained model's to float32 rounding, SCAN moves, and
    replay (which would do nothing) is refused."""
    scan, _ = clusters
    result = finetune(PBE_MODEL, "SCAN", scan[:4], scan[4:6], _quick(replay="none", trainable="lowrank-target", rank=2))
    report, potential = result.report, result.potential
    assert report["after"]["base_held_out"]["force_mae"] < 1e-5  # float32 summation order apart
    assert report["after"]["target_val"]["force_mae"] != report["before"]["target_val"]["force_mae"]
    (update,) = potential.fidelity_low_rank
    assert potential.fidelities[update.fidelity] == "SCAN" and update.rank == 2
    assert [n for n, p in potential.named_parameters() if p.requires_grad] == [n for n, _ in potential.named_parameters() if ".updates." in n]
    with pytest.raises(ValueError, match="would do nothing with trainable='lowrank-target'"):
        finetune(PBE_MODEL, "SCAN", scan[:4], scan[4:6], _quick(replay="distill", trainable="lowrank-target"))


def test_cli_default_replay_follows_the_trainable_choice():
    """The CLI's default replay is the one that does something: none for a SevenNet adapter
    (its base level is exact), distill otherwise, and data whenever base-level frames are given
    (a SevenNet adapter then errors in finetune rather than ignoring them)."""
    from fidelity_adapters.cli import _default_replay

    assert _default_replay("sevenn", "adapter", []) == "none"
    assert _default_replay("sevenn", "all", []) == "distill"
    assert _default_replay("matgl", "adapter", []) == "distill"
    assert _default_replay("sevenn", "adapter", ["a base frame"]) == "data"
    assert _default_replay("matgl", "lowrank-target", []) == "none"


def test_finetune_resumes_from_its_checkpoint(clusters, tmp_path, capsys):
    """A killed fine-tuning run (here: one that ended) picks up from out_dir's checkpoint: the same
    adapter weights and step count come back, no epoch is trained again."""
    pytest.importorskip("sevenn", reason="sevenn is not installed (pip install -e '.[sevenn]')")
    scan, _ = clusters
    train = TrainConfig(max_epochs=1, learning_rate=1e-3, batch_size=4)  # progress on: the resume message shows
    config = FinetuneConfig(train=train, replay="none", trainable="adapter", rank=2)
    first = finetune("sevenn:7net-mf-0", "SCAN", scan[:4], scan[4:6], config, out_dir=tmp_path)
    assert (tmp_path / "checkpoint.pt").is_file() and "resuming" not in capsys.readouterr().err
    again = finetune("sevenn:7net-mf-0", "SCAN", scan[:4], scan[4:6], config, out_dir=tmp_path)
    assert "resuming from" in capsys.readouterr().err
    assert again.report["optimizer_steps"] == first.report["optimizer_steps"] == 1
    assert again.report["training_seconds"] == first.report["training_seconds"] > 0  # the epoch's time came back too
    saved, resumed = first.potential.state_dict(), again.potential.state_dict()
    assert all(torch.equal(saved[k], resumed[k]) for k in saved)
