"""Comparison reports: seed statistics, grouping and order, the files written, and the errors."""

from __future__ import annotations

import json

import numpy as np
import pytest

from fidelity_adapters.report import read_results, save_parity, summarise, write_report

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def run(strategy="mfi", fraction=0.1, seed=0, energy=1e-3, force=4e-2, sampling="random", n_hifi=30, **extra):
    return {
        "strategy": strategy, "fraction": fraction, "seed": seed, "sampling": sampling, "target": "SCAN",
        "n_hifi_train": n_hifi, "n_lofi_train": 240, "n_test": 30,
        "energy_mae_per_atom": energy, "force_mae": force, "note": "", "parity": None, **extra,
    }  # fmt: skip


def test_summarise_mean_and_sample_std_over_seeds():
    rng = np.random.default_rng(3)
    energies, forces = rng.uniform(1e-3, 5e-3, 4), rng.uniform(2e-2, 8e-2, 4)
    records = [run(seed=s, energy=float(e), force=float(f)) for s, (e, f) in enumerate(zip(energies, forces))]
    records.append(run(fraction=0.5, seed=0, energy=2e-3, force=3e-2, n_hifi=150))
    rows = summarise(records)
    assert len(rows) == 2
    row = rows[0]
    assert (row["fraction"], row["n_seeds"], row["seeds"], row["n_hifi_train"]) == (0.1, 4, [0, 1, 2, 3], 30)
    assert row["energy_mae_per_atom_mean"] == pytest.approx(np.mean(energies))
    assert row["energy_mae_per_atom_std"] == pytest.approx(np.std(energies, ddof=1))
    assert row["force_mae_mean"] == pytest.approx(np.mean(forces))
    assert row["force_mae_std"] == pytest.approx(np.std(forces, ddof=1))
    single = rows[1]
    assert (single["n_seeds"], single["energy_mae_per_atom_std"], single["force_mae_std"]) == (1, 0.0, 0.0)


def test_n_hifi_train_is_int_when_equal_and_mean_otherwise():
    same = summarise([run(seed=0, n_hifi=30), run(seed=1, n_hifi=30)])[0]["n_hifi_train"]
    assert same == 30 and isinstance(same, int)
    assert summarise([run(seed=0, n_hifi=30), run(seed=1, n_hifi=31)])[0]["n_hifi_train"] == pytest.approx(30.5)


def test_samplings_are_separate_groups():
    records = [run(sampling="random", seed=s, energy=1e-3 * (s + 1)) for s in range(2)]
    records += [run(sampling="fps", seed=s, energy=1e-2 * (s + 1)) for s in range(2)]
    rows = {row["sampling"]: row for row in summarise(records)}
    assert set(rows) == {"random", "fps"}
    assert rows["random"]["n_seeds"] == rows["fps"]["n_seeds"] == 2
    assert rows["random"]["energy_mae_per_atom_mean"] == pytest.approx(np.mean([1e-3, 2e-3]))
    assert rows["fps"]["energy_mae_per_atom_mean"] == pytest.approx(np.mean([1e-2, 2e-2]))


def test_rows_ordered_by_known_strategies_then_others_then_fraction():
    strategies = ["zeta", "multihead", "alpha", "delta", "mfi", "transfer", "single"]
    records = [run(strategy=s, fraction=f) for f in (0.5, 0.05, 0.2) for s in strategies]
    order = [(row["strategy"], row["fraction"]) for row in summarise(records)]
    expected_strategies = ["mfi", "single", "transfer", "delta", "multihead", "alpha", "zeta"]
    assert order == [(s, f) for s in expected_strategies for f in (0.05, 0.2, 0.5)]
    records = [run(sampling=s, fraction=f) for f in (0.5, 0.1) for s in ("random", "fps")]
    order = [(row["sampling"], row["fraction"]) for row in summarise(records)]
    assert order == [("fps", 0.1), ("fps", 0.5), ("random", 0.1), ("random", 0.5)]  # each curve contiguous


def test_duplicate_seed_in_a_group_is_an_error():
    with pytest.raises(ValueError, match="duplicate seed"):
        summarise([run(seed=0), run(seed=0)])


def test_save_parity_round_trips_and_flattens_forces(tmp_path):
    forces = np.arange(12.0).reshape(4, 3)
    path = tmp_path / "sub" / "parity.npz"
    save_parity(path, [0.1, 0.2], [0.11, 0.19], forces, forces + 0.5)
    with np.load(path) as data:
        np.testing.assert_allclose(data["energy_pred_per_atom"], [0.11, 0.19])
        np.testing.assert_allclose(data["force_pred"], forces.ravel() + 0.5)
    assert [p.name for p in path.parent.iterdir()] == ["parity.npz"]  # no temp file left behind
    with pytest.raises(ValueError, match="energy_pred_per_atom"):
        save_parity(path, [0.1, 0.2], [0.1], forces, forces)


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    """One report over two strategies, two samplings, two fractions and two seeds, with some parity missing."""
    directory = tmp_path_factory.mktemp("report")
    rng = np.random.default_rng(0)
    records = []
    for strategy in ("delta", "mfi"):
        for sampling in ("random", "fps"):
            for fraction in (0.1, 0.5):
                for seed in (0, 1):
                    parity = f"runs/{strategy}/{sampling}/f{fraction}/s{seed}/parity.npz"
                    if seed == 0 and not (strategy == "delta" and sampling == "fps"):
                        true_e, true_f = rng.normal(size=5), rng.normal(size=45)
                        save_parity(directory / parity, true_e, true_e + 0.01, true_f, true_f - 0.05)
                    note = "lofi labels from PBE run" if strategy == "delta" else ""
                    records.append(run(strategy, fraction, seed, float(rng.uniform(1e-3, 3e-3)),
                                       float(rng.uniform(2e-2, 6e-2)), sampling, int(300 * fraction),
                                       note=note, parity=parity,
                                       energy_bias_per_atom=float(rng.uniform(-3e-3, 3e-3))))  # fmt: skip
    records[-1]["parity"] = None  # mfi fps 0.5 seed 1: not the plotted seed, must not matter
    records[-2]["parity"] = None  # mfi fps 0.5 seed 0: no parity recorded
    header = "Command: `python compare.py --seeds 2`\nData: water clusters, PBE -> SCAN"
    path = write_report(records, directory, title="Water test", header=header)
    return directory, path, records, header


def test_write_report_creates_files_and_valid_pngs(report):
    directory, path, _, _ = report
    assert path == directory / "report.md"
    assert path.is_file() and (directory / "results.json").is_file()
    pngs = [directory / "learning_curve.png"]
    pngs += [directory / "parity" / f"{s}_{sampling}_{pct}.png" for s in ("mfi", "delta")
             for sampling in ("random", "fps") for pct in ("10", "50") if (s, sampling) != ("delta", "fps")
             and (s, sampling, pct) != ("mfi", "fps", "50")]  # fmt: skip
    for png in pngs:
        assert png.is_file(), png
        data = png.read_bytes()
        assert data[:8] == PNG_SIGNATURE and len(data) > 5000, png
    assert sorted(p.name for p in (directory / "parity").iterdir()) == sorted(p.name for p in pngs[1:])
    assert not list(directory.glob("**/*.tmp"))


def test_read_results_round_trips(report):
    directory, _, records, _ = report
    results = read_results(directory)
    assert results["title"] == "Water test"
    assert results["records"] == records
    assert results["summary"] == summarise(records)


def test_markdown_has_header_one_row_per_group_and_formatted_numbers(report):
    directory, path, records, header = report
    text = path.read_text()
    assert text.startswith("# Water test\n")
    assert header in text
    summary = summarise(records)
    rows = [line for line in text.splitlines() if line.startswith("| ") and "±" in line]
    assert len(rows) == len(summary) == 8
    for line, row in zip(rows, summary):
        runs = [r for r in records if (r["strategy"], r["sampling"], r["fraction"]) ==
                (row["strategy"], row["sampling"], row["fraction"])]  # fmt: skip
        energies = 1000 * np.array([r["energy_mae_per_atom"] for r in runs])
        forces = 1000 * np.array([r["force_mae"] for r in runs])
        biases = 1000 * np.array([r["energy_bias_per_atom"] for r in runs])
        cells = [cell.strip() for cell in line.strip("|").split("|")]
        assert cells[:5] == [row["strategy"], row["sampling"], f"{100 * row['fraction']:g}",
                             str(int(300 * row["fraction"])), "2"]  # fmt: skip
        assert cells[5] == f"{energies.mean():.2f} ± {energies.std(ddof=1):.2f}"
        assert cells[6] == f"{forces.mean():.2f} ± {forces.std(ddof=1):.2f}"
        assert cells[7] == f"{biases.mean():.2f} ± {biases.std(ddof=1):.2f}"
    assert "ddof = 1" in text


def test_markdown_lists_distinct_notes_and_links(report):
    _, path, _, _ = report
    text = path.read_text()
    assert text.count("lofi labels from PBE run") == 1
    assert "- **delta**: lofi labels from PBE run" in text
    assert "(learning_curve.png)" in text
    assert "(parity/mfi_random_10.png)" in text


def test_missing_parity_is_reported_not_fatal(report):
    _, path, _, _ = report
    text = path.read_text()
    skipped = text.split("Parity plots not drawn:")[1]
    for pct in ("10", "50"):
        assert f"delta (fps) at {pct} %, seed 0: parity file `runs/delta/fps/f{int(pct) / 100}/s0/parity.npz` not found" in skipped
    assert "mfi (fps) at 50 %, seed 0: no parity file recorded" in skipped
    assert "(parity/delta_fps_10.png)" not in text


def test_unreadable_parity_file_is_reported(tmp_path):
    (tmp_path / "bad.npz").write_bytes(b"not an npz")
    text = write_report([run(parity="bad.npz")], tmp_path).read_text()
    assert "parity file `bad.npz` unreadable" in text
    assert not (tmp_path / "parity" / "mfi_random_10.png").exists()


def test_empty_records_are_an_error(tmp_path):
    with pytest.raises(ValueError, match="no records"):
        write_report([], tmp_path)
    assert not (tmp_path / "results.json").exists()


def test_missing_key_names_key_and_record(tmp_path):
    record = run(strategy="transfer", fraction=0.2, seed=3)
    del record["force_mae"]
    with pytest.raises(ValueError, match="force_mae") as error:
        write_report([run(), record], tmp_path)
    assert "'transfer'" in str(error.value) and "0.2" in str(error.value) and "seed=3" in str(error.value)


def test_read_results_errors_name_the_file(tmp_path):
    with pytest.raises(ValueError, match="results.json"):
        read_results(tmp_path)
    (tmp_path / "results.json").write_text('{"title": "x", "records": [')
    with pytest.raises(ValueError, match="results.json"):
        read_results(tmp_path)
    (tmp_path / "results.json").write_text(json.dumps({"title": "x"}))
    with pytest.raises(ValueError, match="records"):
        read_results(tmp_path)


def test_energy_only_report_has_one_panel_and_dashes(tmp_path):
    """CASPT2-like data: no force labels, so no empty force panel and '–' in the force column."""
    from matplotlib.image import imread

    records = [run("mfi", 0.1, seed, 1e-3 * (1 + seed), float("nan")) for seed in (0, 1)]
    forces = [run("mfi", 0.1, seed, 1e-3, 4e-2) for seed in (0, 1)]
    write_report(records, tmp_path / "e", title="energy only")
    write_report(forces, tmp_path / "ef", title="with forces")
    width_e = imread(tmp_path / "e" / "learning_curve.png").shape[1]
    width_ef = imread(tmp_path / "ef" / "learning_curve.png").shape[1]
    assert width_e < 0.6 * width_ef
    row = [line for line in (tmp_path / "e" / "report.md").read_text().splitlines() if line.startswith("| mfi")][0]
    cells = [cell.strip() for cell in row.strip().strip("|").split("|")]
    assert cells[5:] == ["1.50 ± 0.71", "–", "–"]  # no force labels; no bias recorded by these runs


def test_energy_bias_is_averaged_and_tells_offset_from_scatter(tmp_path):
    """Two seeds off by +4 and +2 meV/atom: the bias column shows it, signed, beside the MAE."""
    records = [run(seed=0, energy=4e-3, energy_bias_per_atom=4e-3), run(seed=1, energy=3e-3, energy_bias_per_atom=2e-3)]
    row = summarise(records)[0]
    assert row["energy_bias_per_atom_mean"] == pytest.approx(3e-3)
    assert row["energy_bias_per_atom_std"] == pytest.approx(np.std([4e-3, 2e-3], ddof=1))
    write_report(records, tmp_path, title="bias")
    line = [line for line in (tmp_path / "report.md").read_text().splitlines() if line.startswith("| mfi")][0]
    assert line.rstrip().endswith("| 3.00 ± 1.41 |")
    assert np.isnan(summarise([run(seed=0), run(seed=1, energy_bias_per_atom=1e-3)])[0]["energy_bias_per_atom_mean"])


def test_parity_plot_falls_back_to_the_next_seed(tmp_path):
    """A run restored from an earlier report has no parity file: the plot comes from the lowest
    seed that has one, and says which seed it is."""
    true_e, true_f = np.zeros(3), np.zeros(9)
    save_parity(tmp_path / "s1.npz", true_e, true_e + 0.01, true_f, true_f - 0.05)
    text = write_report([run(seed=0, parity="s0.npz"), run(seed=1, parity="s1.npz")], tmp_path).read_text()
    assert "(parity/mfi_random_10.png)" in text and "Parity plots not drawn" not in text
