"""The command line: train, evaluate --json, info, and errors as messages with exit code 2."""

import json

import numpy as np
import pytest
from ase.calculators.singlepoint import SinglePointCalculator
from ase.io import write

from conftest import water_dimer
from fidelity_adapters.cli import main


@pytest.fixture
def data_file(tmp_path):
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
    assert json.loads(capsys.readouterr().out)["fidelities"] == ["SCAN", "PBE"]
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
