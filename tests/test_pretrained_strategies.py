"""The strategies that start from a foundation model, run by the comparison harness on the
bundled clusters: every one trains and predicts on the paper's split, budgets are equal in
optimizer steps, forgetting is reported, and settings that cannot work are refused up front.
One epoch each: these check that the options take effect, not accuracy."""

from __future__ import annotations

import json

import numpy as np
import pytest

from fidelity_adapters.compare import CompareSettings, Comparison, compare
from fidelity_adapters.pretrained import entry
from fidelity_adapters.report import read_results

R2SCAN_MODEL = "matgl:M3GNet-MatPES-r2SCAN-v2025.1"
pytestmark = pytest.mark.skipif(entry(R2SCAN_MODEL).locate()[0] is None, reason="matgl MatPES weights not found")


def settings(**options) -> CompareSettings:
    values = dict(lofi=["PBE"], hifi="r2SCAN", fractions=[0.05], seeds=[0], epochs=1, batch_size=8, geometries=120,
                  learning_rate=2e-4, pretrained=R2SCAN_MODEL, strategies=["zero-shot", "ft-mfi", "ft-transfer", "ft-delta"],
                  model={"node_dim": 16, "edge_dim": 16, "hidden": [16], "readout_hidden": [16, 16]})  # fmt: skip
    return CompareSettings.from_dict({**values, **options})


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    out = tmp_path_factory.mktemp("pretrained_sweep")
    report = compare(settings(), out)
    return out, {r["strategy"]: r for r in read_results(out)["records"]}, report.read_text()


def test_every_pretrained_strategy_predicts_the_target_on_the_same_test_set(sweep):
    out, records, text = sweep
    assert set(records) == {"zero-shot", "ft-mfi", "ft-transfer", "ft-delta"}
    assert {r["n_test"] for r in records.values()} == {records["zero-shot"]["n_test"]} and records["zero-shot"]["n_test"] > 0
    for record in records.values():
        assert np.isfinite(record["energy_mae_per_atom"]) and record["force_mae"] < 1.0  # eV/A; untrained nets give several
    assert "optimizer steps" in text and "base-level drift" in text and R2SCAN_MODEL in text
    assert "backbone M3GNet" in text and "transfer freezes" not in text  # ft-delta builds a model; no `transfer` ran


def test_plain_fine_tuning_gets_as_many_steps_as_fine_tuning_with_replay(sweep):
    _, records, _ = sweep
    assert records["zero-shot"]["optimizer_steps"] == 0
    assert records["ft-mfi"]["optimizer_steps"] > 0
    assert records["ft-transfer"]["optimizer_steps"] == records["ft-mfi"]["optimizer_steps"]  # 2 epochs of 1 batch vs 1 of 2
    assert records["ft-mfi"]["replay"] == "distill" and records["ft-transfer"]["replay"] == "none"
    assert records["ft-transfer"]["base_drift_force_mae"] > 0  # without replay the base level moves, and it is measured


def test_plain_fine_tuning_trains_all_weights_whatever_ft_mfi_trains(tmp_path):
    compare(settings(strategies=["ft-mfi", "ft-transfer"], finetune={"trainable": "adapter"}), tmp_path)
    records = {r["strategy"]: r for r in read_results(tmp_path)["records"]}
    assert records["ft-mfi"]["trainable"] == "adapter" and records["ft-transfer"]["trainable"] == "all"


def test_the_target_is_a_new_level_beside_the_models_own(sweep):
    """The bundled data's r2SCAN (PySCF) is not MatPES's r2SCAN: it is fine-tuned as a new fidelity,
    and replay holds the model's own level, whose drift is reported."""
    out, records, _ = sweep
    report = json.loads((out / "runs" / "ft-mfi" / "random" / "f5" / "s0" / "finetune_report.json").read_text())
    assert report["target"] == "r2SCAN (data)" and report["base_fidelity"] == "r2SCAN"
    assert records["ft-mfi"]["base_drift_force_mae"] == pytest.approx(report["after"]["base_held_out"]["force_mae"])
    assert report["before"]["base_held_out"]["force_mae"] < 1e-6  # before training the base level is the model itself


def test_zero_shot_is_the_foundation_model_with_a_fitted_offset(sweep):
    """Its energy bias is small (the offset is fitted on training structures), and it needs no training."""
    _, records, _ = sweep
    assert abs(records["zero-shot"]["energy_bias_per_atom"]) < 0.05  # eV/atom; MatPES vs PySCF zero differ by ~690


@pytest.mark.parametrize(
    "options, message",
    [
        ({"pretrained": None}, "set `pretrained`"),
        ({"pretrained": "matgl:nope"}, "unknown pretrained model"),
        ({"pretrained_base": "PBE"}, "not one of"),
        ({"finetune": {"replay": "everything"}}, "replay must be one of"),
        ({"finetune": {"epochs": 3}}, "finetune options"),
        ({"strategies": ["mfi"]}, "no strategy uses them"),
    ],
)
def test_settings_a_foundation_model_cannot_take_are_refused_before_training(options, message, tmp_path):
    with pytest.raises(ValueError, match=message):
        Comparison(settings(**options), tmp_path / "sweep")


def test_replay_data_replays_the_splits_low_fidelity_structures_at_the_base_level(tmp_path):
    pbe_model = "matgl:M3GNet-MatPES-PBE-v2025.1"
    options = dict(pretrained=pbe_model, strategies=["ft-mfi"], finetune={"replay": "data", "replay_ratio": 2.0})
    compare(settings(**options), tmp_path / "sweep")
    report = json.loads((tmp_path / "sweep" / "runs" / "ft-mfi" / "random" / "f5" / "s0" / "finetune_report.json").read_text())
    assert report["replay"] == "data" and report["n_replay_train"] == 2 * report["n_target_train"]
    assert report["target"] == "r2SCAN" and report["base_fidelity"] == "PBE"
    with pytest.raises(ValueError, match="have none at r2SCAN"):
        compare(settings(strategies=["ft-mfi"], finetune={"replay": "data"}), tmp_path / "other")
