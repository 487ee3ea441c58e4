"""examples/pretrained_water_finetune.py's from-scratch route (scratch-mfi): the lower-level frames
take part in training, and a missing or same-level --low-data is an error, not a silent
single-fidelity model. Small bundled clusters stand in for the liquid sets; no foundation model
is needed."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch

from fidelity_adapters.bundled import water_clusters
from fidelity_adapters.data import select, write_structures

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "pretrained_water_finetune.py"


@pytest.fixture(scope="module")
def example():
    spec = importlib.util.spec_from_file_location("pretrained_water_finetune", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def files(tmp_path):
    clusters = water_clusters()
    write_structures(select(clusters, "SCAN")[:5], tmp_path / "target.extxyz")
    write_structures(select(clusters, "PBE")[:3], tmp_path / "low.extxyz")
    return tmp_path


def arguments(files, *extra):
    return ["--data", str(files / "target.extxyz"), "--target", "SCAN", "--every", "1", "--test-frames", "2",
            "--val-frames", "1", "--train-frames", "2", "--runs", "scratch-mfi", "--scratch-epochs", "2",
            "--threads", "1", "--out", str(files / "out"), *extra]  # fmt: skip


def test_scratch_mfi_trains_on_both_levels(example, files, capsys):
    example.main(arguments(files, "--low-data", str(files / "low.extxyz")))
    progress = capsys.readouterr().err  # a line per epoch on stderr, so a run of hours can be followed
    assert "training: 100%" in progress and "2/2" in progress and "val=" in progress
    (record,) = json.loads((files / "out" / "results.json").read_text())
    assert record["steps"] == 2 * (3 + 2)  # 2 epochs of 3 PBE + 2 SCAN frames, batch 1
    assert "3 PBE frames" in record["label"] and record["pretrained"] is None
    assert record["epochs"] == 2 and 0 <= record["best_epoch"] < 2
    assert record["test"]["n_structures"] == 2 and record["test"]["force_mae"] > 0
    report = (files / "out" / "report.md").read_text()
    assert "scratch-mfi's lower level: 3 frames of low.extxyz" in report and "| - | - |" in report
    assert "from-scratch models: 2 epochs" in report and "fine-tuning:" not in report  # no fine-tuning run, no its settings


def test_low_every_subsamples_the_lower_level(example, files):
    example.main(arguments(files, "--low-data", str(files / "low.extxyz"), "--low-every", "2"))
    (record,) = json.loads((files / "out" / "results.json").read_text())
    assert record["steps"] == 2 * (2 + 2) and "2 PBE frames" in record["label"]


def test_checkpoints_let_the_same_command_resume(example, files, capsys):
    command = arguments(files, "--low-data", str(files / "low.extxyz"), "--checkpoints", str(files / "ckpt"))
    example.main(command)
    (first,) = json.loads((files / "out" / "results.json").read_text())
    assert (files / "ckpt" / "scratch-mfi" / "checkpoint.pt").is_file()
    capsys.readouterr()
    example.main(command)  # as after a kill at the end: resumes past the last epoch, trains no more
    (again,) = json.loads((files / "out" / "results.json").read_text())
    assert "resuming from" in capsys.readouterr().err and again["test"] == first["test"]
    assert again["steps"] == first["steps"] == 2 * (3 + 2)  # the history comes back with the checkpoint
    assert again["training_seconds"] == first["training_seconds"] > 0  # and its epoch times: no epoch ran again
    assert "| training (s) |" in (files / "out" / "report.md").read_text()
    with pytest.raises(ValueError, match="other settings.*learning_rate"):
        example.main([*command, "--scratch-lr", "5e-4"])


def test_scratch_mfi_without_lower_level_is_an_error(example, files, capsys):
    with pytest.raises(SystemExit):
        example.main(arguments(files))
    assert "--runs scratch-mfi needs --low-data" in capsys.readouterr().err


def test_lower_level_at_the_target_is_an_error(example, files):
    with pytest.raises(ValueError, match="at the target level 'SCAN'"):
        example.main(arguments(files, "--low-data", str(files / "target.extxyz")))



@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal where CUDA is absent")
def test_device_without_cuda_is_refused_before_any_work(example, files, capsys):
    with pytest.raises(SystemExit):
        example.main(arguments(files, "--low-data", str(files / "low.extxyz"), "--device", "cuda"))
    assert "--device cuda: no CUDA device is available here" in capsys.readouterr().err
    assert not (files / "out").exists()
