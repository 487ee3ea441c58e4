"""The command line: train, evaluate --json, info, and errors as messages with exit code 2."""

import json
import os
from pathlib import Path

import pytest
import torch
from ase.io import write

from conftest import water_dimer
from fidelity_adapters.cli import main


def test_train_then_evaluate_json(tmp_path, data_file, capsys):
    out = tmp_path / "run"
    assert main(["train", str(data_file), "--out", str(out), "--epochs", "1", "--target", "SCAN", "--batch-size", "4", "--val-fraction", "0.25"]) == 0
    model = out / "model.safetensors"
    assert model.exists() and (out / "checkpoint.pt").exists()
    capsys.readouterr()
    assert main(["evaluate", str(model), str(data_file), "--fidelity", "SCAN", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert set(result) == {"energy_mae_per_atom", "energy_bias_per_atom", "force_mae", "n_structures"}
    assert result["n_structures"] == 4 and result["force_mae"] > 0
    assert abs(result["energy_bias_per_atom"]) <= result["energy_mae_per_atom"]
    assert main(["info", str(model)]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["fidelities"] == ["SCAN", "PBE"]
    assert info["extra"]["training"]["max_epochs"] == 1 and info["extra"]["training"]["monitor"] == "SCAN"
    assert info["extra"]["data"] == [str(data_file)] and info["extra"]["val_fraction"] == 0.25
    refit = tmp_path / "refit"
    assert main(["train", str(data_file), "--out", str(refit), "--epochs", "1", "--target", "SCAN", "--batch-size", "4",
                 "--val-fraction", "0.25", "--refit-references"]) == 0  # fmt: skip
    capsys.readouterr()
    assert main(["evaluate", str(refit / "model.safetensors"), str(data_file), "--fidelity", "SCAN", "--json"]) == 0
    refitted = json.loads(capsys.readouterr().out)
    assert refitted["force_mae"] == pytest.approx(result["force_mae"])  # the same training, energies shifted
    assert refitted["energy_bias_per_atom"] != pytest.approx(result["energy_bias_per_atom"])


def test_errors_are_messages(tmp_path, data_file, capsys):
    assert main(["train", str(data_file), "--out", str(tmp_path / "r"), "--fidelities", "PBE"]) == 2
    assert "not in --fidelities" in capsys.readouterr().err
    assert main(["train", str(data_file), "--out", str(tmp_path / "r"), "--target", "r2SCAN"]) == 2
    assert "--target 'r2SCAN'" in capsys.readouterr().err
    assert main(["evaluate", str(tmp_path / "none.safetensors"), str(data_file), "--fidelity", "PBE"]) == 2
    assert "model file not found" in capsys.readouterr().err


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal where CUDA is absent")
def test_device_without_cuda_is_an_error(tmp_path, data_file, capsys):
    """--device cuda where there is none stops with a message; it never falls back to the CPU."""
    assert main(["train", str(data_file), "--out", str(tmp_path / "r"), "--device", "cuda"]) == 2
    assert "--device cuda: no CUDA device is available here" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()
    assert main(["evaluate", str(tmp_path / "m.safetensors"), str(data_file), "--fidelity", "PBE", "--device", "tpu"]) == 2
    assert "--device 'tpu': give cpu, cuda or cuda:N" in capsys.readouterr().err


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_train_and_evaluate_on_cuda_equal_cpu(tmp_path, data_file, capsys):
    """The same one-epoch float64 training on the GPU and on the CPU: the same model to
    rounding (a different summation order), and evaluate --device cuda gives its errors."""
    from fidelity_adapters.serialization import load_potential

    runs = {}
    for device in ("cpu", "cuda"):
        out = tmp_path / device
        command = ["train", str(data_file), "--out", str(out), "--epochs", "1", "--batch-size", "4", "--val-fraction", "0.25"]
        assert main([*command, "--precision", "float64", "--device", device]) == 0
        runs[device] = load_potential(out / "model.safetensors").state_dict()
    for key, value in runs["cpu"].items():
        torch.testing.assert_close(runs["cuda"][key], value, rtol=1e-6, atol=1e-8, msg=key)
    capsys.readouterr()
    assert main(["evaluate", str(tmp_path / "cuda" / "model.safetensors"), str(data_file), "--fidelity", "SCAN", "--json", "--device", "cuda"]) == 0
    assert json.loads(capsys.readouterr().out)["force_mae"] > 0


@pytest.mark.parametrize(
    "flags, message",
    [(["--epochs", "0"], "max_epochs = 0"), (["--force-weight", "-1"], "force_weight = -1"),
     (["--val-fraction", "1"], "--val-fraction 1"), (["--val-fraction", "-0.1"], "--val-fraction -0.1"),
     (["--patience", "-2"], "patience = -2"), (["--batch-size", "0"], "batch_size = 0")],
)  # fmt: skip
def test_out_of_range_training_options_are_refused(tmp_path, data_file, capsys, flags, message):
    assert main(["train", str(data_file), "--out", str(tmp_path / "r"), *flags]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "r" / "model.safetensors").exists()


def test_infinite_labels_are_errors_and_missing_ones_print_json_null(tmp_path, data_file, capsys):
    from ase.io import read

    frames = read(data_file, ":")
    frames[3].calc.results["energy"] = float("inf")
    write(tmp_path / "inf.extxyz", frames)
    assert main(["evaluate", str(tmp_path / "none.safetensors"), str(tmp_path / "inf.extxyz"), "--fidelity", "PBE"]) == 2
    assert main(["train", str(tmp_path / "inf.extxyz"), "--out", str(tmp_path / "r"), "--epochs", "1"]) == 2
    assert "inf.extxyz:3: energy is inf" in capsys.readouterr().err

    out = tmp_path / "run"
    assert main(["train", str(data_file), "--out", str(out), "--epochs", "1", "--batch-size", "4", "--val-fraction", "0.25"]) == 0
    for atoms in frames:
        atoms.calc = None  # geometries only: no energy and no force labels
    write(tmp_path / "bare.extxyz", frames)
    capsys.readouterr()
    assert main(["evaluate", str(out / "model.safetensors"), str(tmp_path / "bare.extxyz"), "--fidelity", "PBE", "--json"]) == 0
    printed = capsys.readouterr().out
    assert "NaN" not in printed and json.loads(printed)["energy_mae_per_atom"] is None


def test_data_fidelity_fills_in_missing_names_and_never_overrides_one(tmp_path, data_file, capsys):
    from ase.io import read

    frames = read(data_file, ":")
    for atoms in frames[:4]:
        del atoms.info["fidelity"]  # half the file names no fidelity
    write(tmp_path / "mixed.extxyz", frames)
    out = tmp_path / "run"
    flags = ["--epochs", "1", "--batch-size", "4", "--val-fraction", "0.25", "--data-fidelity", "PBE"]
    assert main(["train", str(tmp_path / "mixed.extxyz"), "--out", str(out), *flags]) == 0
    capsys.readouterr()
    assert main(["info", str(out / "model.safetensors")]) == 0
    assert sorted(json.loads(capsys.readouterr().out)["fidelities"]) == ["PBE", "SCAN"]  # SCAN frames kept their name
    assert main(["evaluate", str(out / "model.safetensors"), str(tmp_path / "mixed.extxyz"), "--fidelity", "PBE",
                 "--data-fidelity", "PBE", "--json"]) == 0  # fmt: skip
    assert json.loads(capsys.readouterr().out)["n_structures"] == 4 + 2  # frames 0-3 (unnamed, now PBE) and the 2 named PBE among 4-7


def test_ctrl_c_says_where_the_run_resumes(tmp_path, data_file, capsys, monkeypatch):
    from fidelity_adapters import training

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(training, "_train", interrupted)
    assert main(["train", str(data_file), "--out", str(tmp_path / "run"), "--epochs", "1"]) == 130
    assert f"resumes from {tmp_path / 'run'}" in capsys.readouterr().err


def test_a_resumed_run_says_so(tmp_path, data_file, capsys):
    flags = ["--out", str(tmp_path / "run"), "--epochs", "1", "--batch-size", "4", "--val-fraction", "0.25"]
    assert main(["train", str(data_file), *flags]) == 0
    assert "resuming" not in capsys.readouterr().err
    assert main(["train", str(data_file), *flags]) == 0
    assert f"resuming from {tmp_path / 'run' / 'checkpoint.pt'} after epoch 0" in capsys.readouterr().err


def test_threads_option_sets_torch_threads(data_file, monkeypatch, capsys):
    import torch

    from fidelity_adapters.cli import default_threads

    assert main(["evaluate", "--threads", "1", "absent.safetensors", str(data_file), "--fidelity", "SCAN"]) == 2
    assert "torch threads: 1 (--threads)" in capsys.readouterr().err and torch.get_num_threads() == 1
    assert main(["evaluate", "--threads", "0", "absent.safetensors", str(data_file), "--fidelity", "SCAN"]) == 2
    assert "--threads must be >= 1" in capsys.readouterr().err
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr("os.sched_getaffinity", lambda pid: {0, 1, 2, 3})
    monkeypatch.setattr("os.getloadavg", lambda: (2.0, 2.0, 2.0))  # e.g. a pip install that has just ended
    # /proc/stat's (all, idle) jiffies, read twice: cpu 1 busy 90 % of the time in between, the others idle
    busy_first, busy_second = {c: (1000, 1000) for c in range(4)}, {c: (1100, 1100) for c in range(4)} | {1: (1100, 1010)}
    samples = iter([busy_first, busy_second])

    def stat_sample(cpus):
        return next(samples)

    monkeypatch.setattr("fidelity_adapters.cli.cpu_times", stat_sample)
    assert default_threads() == 3  # four cores, one kept busy now by another process; not the load average's 2
    samples = iter([busy_first, busy_second])
    main(["evaluate", "absent.safetensors", str(data_file), "--fidelity", "SCAN"])
    assert "torch threads: 3 (the free cores" in capsys.readouterr().err and torch.get_num_threads() == 3
    samples = iter([busy_first, {c: (1100, 1000) for c in range(4)}])
    assert default_threads() == 1  # all four busy

    def no_proc_stat(cpus):
        raise FileNotFoundError("/proc/stat")

    monkeypatch.setattr("fidelity_adapters.cli.cpu_times", no_proc_stat)
    assert default_threads() == 2  # without /proc/stat (macOS): the load average
    monkeypatch.setattr("os.getloadavg", lambda: (9.0, 9.0, 9.0))
    assert default_threads() == 1


@pytest.mark.skipif(not Path("/proc/stat").exists(), reason="reads Linux's /proc/stat")
def test_busy_cores_reads_this_machine():
    from fidelity_adapters.cli import busy_cores

    cpus = os.sched_getaffinity(0)
    busy = busy_cores(cpus, seconds=0.05)
    assert busy is not None and 0 <= busy <= len(cpus) + 1e-9
    assert busy_cores({10**6}, seconds=0.0) is None  # a CPU /proc/stat does not list: nothing to say


def test_relax_on_an_empty_file_is_a_message(tmp_path, capsys):
    from conftest import small_potential
    from fidelity_adapters.serialization import save_potential

    save_potential(small_potential(["H", "O"], ["PBE", "SCAN"]), tmp_path / "m.safetensors")
    (tmp_path / "empty.extxyz").write_text("")
    assert main(["relax", str(tmp_path / "m.safetensors"), str(tmp_path / "empty.extxyz"), "--fidelity", "PBE"]) == 2
    assert "empty.extxyz: cannot read a structure" in capsys.readouterr().err


def test_simulation_commands_say_what_they_did(tmp_path, capsys):
    """relax that stops at --steps writes its structure and exits 3; eos refuses a molecule
    and says when it falls back to Si; md on a cluster does not print a NaN volume."""
    from ase.io import read

    from conftest import small_potential
    from fidelity_adapters.serialization import save_potential

    model = tmp_path / "m.safetensors"
    save_potential(small_potential(["H", "O"], ["PBE", "SCAN"]), model)
    write(tmp_path / "dimer.extxyz", water_dimer())
    out = tmp_path / "relaxed.extxyz"
    assert main(["relax", str(model), str(tmp_path / "dimer.extxyz"), "--fidelity", "PBE", "--steps", "1", "--fmax", "1e-6",
                 "--fixed-cell", "--out", str(out)]) == 3  # fmt: skip
    assert "NOT converged in 1 steps" in capsys.readouterr().out and len(read(out)) == 6
    assert main(["eos", str(model), "--fidelity", "PBE", "--structure", str(tmp_path / "dimer.extxyz")]) == 2
    assert "needs a crystal periodic in all three directions" in capsys.readouterr().err
    assert main(["md", str(model), str(tmp_path / "dimer.extxyz"), "--fidelity", "PBE", "--steps", "2", "--interval", "1",
                 "--out", str(tmp_path / "md.extxyz")]) == 0  # fmt: skip
    printed = capsys.readouterr().out
    assert "(no volume: not periodic)" in printed and "nan" not in printed
