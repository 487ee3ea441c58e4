"""Per-fidelity sampling (issue 17): fixed ratios and temperatures change how often each
fidelity is drawn, in the epoch order and in a training run's history, and bad settings are
refused; without them the epoch is the plain shuffle it always was."""

from __future__ import annotations

from collections import Counter
from dataclasses import replace

import numpy as np
import pytest
import torch

from conftest import small_potential, water_dimer
from fidelity_adapters.data import from_atoms
from fidelity_adapters.fidelity_sampling import epoch_order, probabilities
from fidelity_adapters.training import TrainConfig, train


def test_shares_from_ratios_and_temperatures():
    counts = {"PBE": 900, "SCAN": 100}
    assert probabilities(counts, {"PBE": 1, "SCAN": 1}, None) == {"PBE": 0.5, "SCAN": 0.5}
    assert probabilities(counts, None, 1.0) == pytest.approx({"PBE": 0.9, "SCAN": 0.1})
    assert probabilities(counts, None, 2.0) == pytest.approx({"PBE": 0.75, "SCAN": 0.25})  # 30 : 10
    assert probabilities(counts, None, 1e6)["SCAN"] == pytest.approx(0.5, abs=1e-5)


@pytest.mark.parametrize(
    "ratios, temperature, message",
    [
        ({"PBE": 1}, None, "without a ratio: \\['SCAN'\\]"),
        ({"PBE": 1, "SCAN": 1, "CCSD": 1}, None, "not in the data: \\['CCSD'\\]"),
        ({"PBE": 0, "SCAN": 0}, None, "positive sum"),
        ({"PBE": -1, "SCAN": 2}, None, ">= 0"),
        (None, 0.0, "must be > 0"),
        ({"PBE": 1, "SCAN": 1}, 2.0, "not both"),
    ],
)
def test_bad_sampling_settings_are_named(ratios, temperature, message):
    with pytest.raises(ValueError, match=message):
        probabilities({"PBE": 900, "SCAN": 100}, ratios, temperature)


def test_an_epoch_draws_each_fidelity_by_its_share_and_cycles_a_small_one():
    fidelity_of = ["PBE"] * 900 + ["SCAN"] * 100
    order = epoch_order(fidelity_of, {"PBE": 0.5, "SCAN": 0.5}, torch.Generator().manual_seed(0))
    assert len(order) == 1000
    drawn = Counter(fidelity_of[k] for k in order)
    assert 450 <= drawn["SCAN"] <= 550  # binomial(1000, 0.5): 3 sigma is 47
    scan = [k for k in order if fidelity_of[k] == "SCAN"]
    assert set(scan[:100]) == set(range(900, 1000))  # every SCAN structure once before any repeats
    pbe = [k for k in order if fidelity_of[k] == "PBE"]
    assert len(set(pbe)) == len(pbe)  # drawn less often than it has structures: no repeats


def dimers(n=24):
    rng = np.random.default_rng(0)
    out = []
    for k in range(n):
        s = from_atoms(water_dimer(seed=k), fidelity="SCAN" if k % 6 == 0 else "PBE")
        out.append(replace(s, energy=-4150.0 + 0.01 * k, forces=rng.normal(size=(6, 3))))
    return out


def test_sampling_ratios_change_what_training_sees():
    data = dimers()
    train_set, val_set = data[:18], data[18:]  # 15 PBE, 3 SCAN in training
    config = TrainConfig(max_epochs=2, batch_size=6, progress=False)
    plain, balanced = small_potential(["H", "O"], ["PBE", "SCAN"]), small_potential(["H", "O"], ["PBE", "SCAN"])
    history = train(plain, train_set, val_set, config).history
    assert [(h["PBE/seen"], h["SCAN/seen"]) for h in history] == [(15, 3), (15, 3)]
    history = train(balanced, train_set, val_set, replace(config, sampling_ratios={"PBE": 1, "SCAN": 4})).history
    assert sum(h["SCAN/seen"] for h in history) >= 20  # 36 draws at 0.8: expected 28.8, each SCAN structure several times
    assert any(not torch.equal(a, b) for a, b in zip(plain.state_dict().values(), balanced.state_dict().values()))
    with pytest.raises(ValueError, match="sampling ratios must name"):
        train(small_potential(["H", "O"], ["PBE", "SCAN"]), train_set, val_set, replace(config, sampling_ratios={"PBE": 1}))


def test_train_command_takes_sampling_ratios(tmp_path, capsys):
    from fidelity_adapters.cli import main
    from fidelity_adapters.data import write_structures

    write_structures(dimers(12), tmp_path / "d.extxyz")
    run = ["train", str(tmp_path / "d.extxyz"), "--epochs", "1", "--batch-size", "4", "--val-fraction", "0.25"]
    assert main([*run, "--out", str(tmp_path / "a"), "--sampling-ratios", "PBE=1", "SCAN=3"]) == 0
    checkpoint = torch.load(tmp_path / "a" / "checkpoint.pt", weights_only=True)
    assert '"sampling_ratios": {"PBE": 1.0, "SCAN": 3.0}' in checkpoint["config"]
    with pytest.raises(SystemExit):
        main([*run, "--out", str(tmp_path / "b"), "--sampling-ratios", "SCAN:3"])
    assert "expected FIDELITY=NUMBER" in capsys.readouterr().err
    assert main([*run, "--out", str(tmp_path / "c"), "--sampling-ratios", "SCAN=3"]) == 2
    assert "without a ratio: ['PBE']" in capsys.readouterr().err
