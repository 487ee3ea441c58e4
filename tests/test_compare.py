"""The comparison harness: a tiny sweep runs every strategy, writes a parseable report,
resumes without retraining, and refuses settings that would mix incompatible runs."""

import json

import numpy as np
import pytest
from ase.io import write

from conftest import CU_OPTIONS, paired_cu
from fidelity_adapters import cli
from fidelity_adapters.compare import CompareSettings, Comparison, compare
from fidelity_adapters.report import read_results
from fidelity_adapters.serialization import read_metadata
from fidelity_adapters.strategies import FROM_SCRATCH


@pytest.fixture
def cu_file(tmp_path):
    path = tmp_path / "cu.extxyz"
    frames = []
    for s in paired_cu(20):
        atoms = s.to_atoms()
        atoms.info["energy"] = s.energy
        atoms.arrays["forces"] = s.forces
        frames.append(atoms)
    write(path, frames, format="extxyz")
    return path


def tiny(cu_file, **options):
    values = dict(data=[str(cu_file)], lofi=["lo"], hifi="hi", fractions=[0.2], seeds=[0], epochs=1,
                  batch_size=8, model=dict(CU_OPTIONS))  # fmt: skip
    return CompareSettings.from_dict({**values, **options})


def test_sweep_runs_every_strategy_and_writes_a_parseable_report(cu_file, tmp_path):
    settings = tiny(cu_file, strategy_fractions={"single": [0.2, 0.4]})
    report = compare(settings, tmp_path / "sweep")
    results = read_results(tmp_path / "sweep")
    runs = {(r["strategy"], r["fraction"]) for r in results["records"]}
    assert runs == {(s, 0.2) for s in FROM_SCRATCH} | {("single", 0.4)}
    assert all(r["n_test"] == 2 and r["energy_mae_per_atom"] >= 0 for r in results["records"])
    assert {r["n_hifi_train"] for r in results["records"] if r["strategy"] == "single"} == {4, 8}
    text = report.read_text()
    for name in FROM_SCRATCH:
        assert name in text
    assert "labels for 4/4" in text  # delta says where its lofi labels came from
    assert "transfer freezes ['atom_embedding']" in text and "backbone M3GNet" in text
    assert (tmp_path / "sweep" / "learning_curve.png").exists()
    split = json.loads((tmp_path / "sweep" / "splits" / "random_f20_s0.json").read_text())
    assert split["settings"]["hifi_fraction"] == 0.2 and len(split["test"]) == 2


def test_a_finished_sweep_resumes_without_retraining(cu_file, tmp_path):
    settings = tiny(cu_file, strategies=["single"])
    compare(settings, tmp_path / "sweep")
    record = tmp_path / "sweep" / "runs" / "single" / "random" / "f20" / "s0" / "record.json"
    saved = json.loads(record.read_text())
    with np.load(record.parent / "parity.npz") as parity:
        bias = np.mean(parity["energy_pred_per_atom"] - parity["energy_true_per_atom"])
    assert saved["energy_bias_per_atom"] == pytest.approx(bias)
    saved["note"] = "kept from the first run"
    del saved["energy_bias_per_atom"]  # as saved before the bias was recorded
    record.write_text(json.dumps(saved))
    compare(tiny(cu_file, strategies=["single", "mfi"]), tmp_path / "sweep")  # extending the sweep is allowed
    records = read_results(tmp_path / "sweep")["records"]
    assert [(r["note"], r["energy_bias_per_atom"]) for r in records if r["strategy"] == "single"] == [
        ("kept from the first run", pytest.approx(bias))
    ]
    assert {r["strategy"] for r in records} == {"single", "mfi"}
    (record.parent / "parity.npz").write_bytes(b"not a zip")  # an old run whose parity file broke since
    report = compare(tiny(cu_file, strategies=["single"]), tmp_path / "sweep")
    assert "energy_bias_per_atom" not in read_results(tmp_path / "sweep")["records"][0]
    assert "unreadable" in report.read_text()  # no bias and no plot for it; the report is still written
    with pytest.raises(ValueError, match="epochs"):
        Comparison(tiny(cu_file, epochs=3), tmp_path / "sweep")


def test_direct_and_narrow_sampling_choose_different_hifi_structures(cu_file, tmp_path):
    comparison = Comparison(tiny(cu_file, sampling=["random", "direct", "narrow"]), tmp_path / "sweep")
    splits = {m: comparison.split(m, 0.2, 0) for m in ("random", "direct", "narrow")}
    assert len({tuple(s.hifi_train) for s in splits.values()}) > 1
    assert all(len(s.hifi_train) == 4 and s.test == splits["random"].test for s in splits.values())
    # a given encoder replaces the low-fidelity model's features: narrow on cell volume keeps small cells
    volume = lambda structures: [[abs(np.linalg.det(s.cell))] for s in structures]  # noqa: E731
    by_volume = Comparison(tiny(cu_file, sampling=["narrow"]), tmp_path / "v", encoder=volume).split("narrow", 0.2, 0)
    held = set(by_volume.test + by_volume.validation)
    candidates = [k for k, s in enumerate(comparison.structures) if s.fidelity == "hi" and k not in held]
    volumes = dict(zip(candidates, np.ravel(volume([comparison.structures[k] for k in candidates]))))
    assert max(volumes[k] for k in by_volume.hifi_train) < np.median(list(volumes.values()))


def test_bad_settings_are_named(cu_file, tmp_path):
    with pytest.raises(ValueError, match="unknown comparison settings.*fraction"):
        CompareSettings.from_dict({"fraction": [0.1]})
    with pytest.raises(ValueError, match="unknown strategy 'tl'"):
        Comparison(tiny(cu_file, strategies=["tl"]), tmp_path / "a")
    with pytest.raises(ValueError, match="unknown sampling"):
        Comparison(tiny(cu_file, sampling=["kmeans"]), tmp_path / "b")
    with pytest.raises(ValueError, match="freeze prefix 'atom_embedding' matches no backbone parameter"):
        Comparison(tiny(cu_file, backbone="NequIPStyle", strategies=["transfer"], model={}), tmp_path / "t")
    assert not (tmp_path / "t").exists()  # refused before anything was written or trained
    with pytest.raises(ValueError, match="'SCAN' is in no data file"):
        Comparison(tiny(cu_file, hifi="SCAN"), tmp_path / "c")
    with pytest.raises(ValueError, match="only"):
        Comparison(tiny(cu_file, fractions=[0.9]), tmp_path / "d").run()
    with pytest.raises(ValueError, match=r"data entry 0: .*unknown: \['stride'\]"):
        Comparison(tiny(cu_file, data=[{"path": str(cu_file), "stride": 2}]), tmp_path / "e")


def test_each_data_file_can_be_subsampled_on_its_own(cu_file, tmp_path):
    """Paired Cu file: frames alternate lo, hi. The hi frames from frame 11 on, plus the lo ones."""
    only_late_hi = tiny(cu_file, data=[{"path": str(cu_file), "start": 11, "every": 2}, str(cu_file)], every=2)
    comparison = Comparison(only_late_hi, tmp_path / "sweep")
    labels = [s.label for s in comparison.structures]
    assert labels == [f"cu.extxyz:{k}" for k in [*range(11, 40, 2), *range(0, 40, 2)]]  # the second: sweep-wide every
    assert "cu.extxyz (from frame 11, one frame in 2)" in comparison.header()


def test_cli_compare_reads_yaml_and_flags(cu_file, tmp_path, capsys):
    config = tmp_path / "sweep.yaml"
    config.write_text(f"data: [{cu_file}]\nlofi: [lo]\nhifi: hi\nfractions: [0.2]\nseeds: [0]\nepochs: 1\n"
                      f"model: {json.dumps(CU_OPTIONS)}\n")  # fmt: skip
    code = cli.main(["compare", "--config", str(config), "--strategies", "single", "--out", str(tmp_path / "out")])
    assert code == 0 and "report:" in capsys.readouterr().out
    assert [r["strategy"] for r in read_results(tmp_path / "out")["records"]] == ["single"]
    flags = ["--strategies", "single", "--refit-references", "--out", str(tmp_path / "refit")]
    assert cli.main(["compare", "--config", str(config), *flags]) == 0
    (plain,), (refit,) = (read_results(tmp_path / name)["records"] for name in ("out", "refit"))
    assert json.loads((tmp_path / "refit" / "settings.json").read_text())["refit_references"] is True
    assert refit["force_mae"] == pytest.approx(plain["force_mae"])  # same training; the refit shifts energies only
    assert refit["energy_bias_per_atom"] != pytest.approx(plain["energy_bias_per_atom"])
    flags = ["--strategies", "single", "--max-atoms", "4", "--out", str(tmp_path / "capped")]
    assert cli.main(["compare", "--config", str(config), *flags]) == 0
    (capped,) = read_results(tmp_path / "capped")["records"]
    assert json.loads((tmp_path / "capped" / "settings.json").read_text())["max_atoms"] == 4
    assert capped["force_mae"] != pytest.approx(plain["force_mae"])  # one 4-atom cell per step: other training
    (tmp_path / "bad.yaml").write_text("- a list\n")
    assert cli.main(["compare", "--config", str(tmp_path / "bad.yaml"), "--out", str(tmp_path / "x")]) == 2
    assert "mapping" in capsys.readouterr().err


def test_e3nn_backbones_run_in_the_harness(cu_file, tmp_path):
    """backbone: NequIPStyle trains mfi (fidelity injected) and single with that backbone."""
    e3nn = dict(channels=4, n_basis=4, radial_hidden=4, readout_hidden=4, cutoff=3.0)
    settings = tiny(cu_file, strategies=["mfi", "single"], backbone="NequIPStyle", model=e3nn)
    compare(settings, tmp_path / "sweep")
    metadata = read_metadata(tmp_path / "sweep" / "runs" / "mfi" / "random" / "f20" / "s0" / "best_model.safetensors")
    assert metadata["backbone"] == "NequIPStyle" and metadata["injection"]["places"] == ["messages"]
    assert {r["strategy"] for r in read_results(tmp_path / "sweep")["records"]} == {"mfi", "single"}
    with pytest.raises(ValueError, match="unknown backbone 'MACE'"):
        Comparison(tiny(cu_file, backbone="MACE"), tmp_path / "a")
    with pytest.raises(ValueError, match="multihead needs .* MACEStyle has one head"):
        Comparison(tiny(cu_file, backbone="MACEStyle"), tmp_path / "b")


def test_a_sweep_saved_before_a_setting_existed_resumes(cu_file, tmp_path):
    settings = tiny(cu_file, strategies=["single"])
    compare(settings, tmp_path / "sweep")
    path = tmp_path / "sweep" / "settings.json"
    saved = json.loads(path.read_text())
    del saved["backbone"]  # an older sweep: the setting was then at its default
    path.write_text(json.dumps(saved))
    Comparison(settings, tmp_path / "sweep")
    saved["backbone"] = "MACEStyle"
    path.write_text(json.dumps(saved))
    with pytest.raises(ValueError, match="backbone"):
        Comparison(settings, tmp_path / "sweep")


def test_validation_split_keeps_each_geometry_on_one_side():
    from conftest import paired_cu
    from fidelity_adapters.splits import validation_split

    data = paired_cu(20)  # every geometry at 'lo' and 'hi'
    data += [s for s in paired_cu(10, seed=1, shared=False) if s.fidelity == "lo"]  # 'lo'-only geometries
    for k, s in enumerate(data[40:]):
        s.info["struct_id"] = 100 + k
    train_ids, val_ids = validation_split(data, 0.25, seed=3, must_validate="hi")
    assert sorted(train_ids + val_ids) == list(range(len(data)))
    geometry = lambda ids: {data[k].info["struct_id"] for k in ids}  # noqa: E731
    assert not geometry(train_ids) & geometry(val_ids)
    for name in ("lo", "hi"):
        count = sum(data[k].fidelity == name for k in val_ids)
        total = sum(s.fidelity == name for s in data)
        assert abs(count - 0.25 * total) <= 1, (name, count, total)
    assert validation_split(data, 0.25, seed=3, must_validate="hi") == (train_ids, val_ids)
    assert validation_split(data, 0.25, seed=4, must_validate="hi") != (train_ids, val_ids)


def test_every_committed_results_config_still_parses():
    """The YAMLs beside docs/results reproduce what was measured: each must still name known
    settings and finetune options (a renamed or dropped option fails here, not in a rerun)."""
    from pathlib import Path

    from fidelity_adapters.finetune import FinetuneConfig

    configs = sorted((Path(__file__).parents[1] / "docs" / "results").glob("*.yaml"))
    assert configs
    for path in configs:
        settings = CompareSettings.from_yaml(path)
        FinetuneConfig(**settings.finetune).check()
