"""Reports for a comparison of training strategies across high-fidelity fractions and seeds.

A comparison is only convincing if a reader can see every number behind it and how much
it moves between seeds. `write_report` therefore keeps the raw per-run records next to the
seed-averaged table (results.json), writes a markdown report that states the spread, and
draws the learning curves and parity plots, so a claim such as "multi-fidelity needs less
high-fidelity data" can be checked rather than taken on trust.
"""

from __future__ import annotations

import json
import os
import zipfile
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from .serialization import atomic_write

STRATEGY_ORDER = ("mfi", "single", "transfer", "delta", "multihead", "zero-shot", "ft-mfi", "ft-transfer", "ft-delta")
OPTIONAL_COLUMNS = {  # metric: (column title, its cell in a summary row); shown where some run of the report has it
    "optimizer_steps": ("optimizer steps", lambda row: f"{row['optimizer_steps_mean']:.0f}"),
    "base_drift_force_mae": ("base-level drift F (meV/A)",
                             lambda row: _milli(row["base_drift_force_mae_mean"], row["base_drift_force_mae_std"])),
}  # fmt: skip
REQUIRED_KEYS = ("strategy", "fraction", "seed", "sampling", "n_hifi_train", "energy_mae_per_atom", "force_mae")
PARITY_ARRAYS = ("energy_true_per_atom", "energy_pred_per_atom", "force_true", "force_pred")


def save_parity(path, energy_true_per_atom, energy_pred_per_atom, force_true, force_pred) -> None:
    """Write predicted-vs-true arrays (eV/atom, eV/A) for one run as .npz, atomically.

    Forces may be given in any shape; they are stored flattened.
    """
    arrays = dict(zip(PARITY_ARRAYS, (np.ravel(np.asarray(a, dtype=float)) for a in
                                      (energy_true_per_atom, energy_pred_per_atom, force_true, force_pred))))
    for true, pred in (PARITY_ARRAYS[:2], PARITY_ARRAYS[2:]):
        if arrays[true].shape != arrays[pred].shape:
            raise ValueError(f"{true} has {arrays[true].size} values but {pred} has {arrays[pred].size}")

    def write(tmp: str) -> None:
        with open(tmp, "wb") as handle:  # a handle, so np.savez does not append ".npz" to the temp name
            np.savez(handle, **arrays)

    atomic_write(path, write)


def _describe(record: dict) -> str:
    return f"strategy={record.get('strategy')!r} fraction={record.get('fraction')!r} seed={record.get('seed')!r}"


def _check(records: list[dict]) -> None:
    if not records:
        raise ValueError("no records to report")
    for record in records:
        for key in REQUIRED_KEYS:
            if key not in record:
                raise ValueError(f"record ({_describe(record)}) is missing required key {key!r}")
        if not 0 < float(record["fraction"]) <= 1:
            raise ValueError(f"record ({_describe(record)}) has fraction outside (0, 1]")


def _strategy_rank(strategy: str) -> tuple[int, str]:
    return (STRATEGY_ORDER.index(strategy), "") if strategy in STRATEGY_ORDER else (len(STRATEGY_ORDER), strategy)


def _groups(records: list[dict]) -> dict[tuple[str, float, str], list[dict]]:
    """Records keyed by (strategy, fraction, sampling), each list sorted by seed, in report order."""
    groups: dict[tuple[str, float, str], list[dict]] = defaultdict(list)
    for record in records:
        groups[(record["strategy"], float(record["fraction"]), record["sampling"])].append(record)
    for runs in groups.values():
        runs.sort(key=lambda r: r["seed"])
        seeds = [r["seed"] for r in runs]
        if len(set(seeds)) != len(seeds):
            raise ValueError(f"duplicate seed among records ({_describe(runs[0])}, sampling={runs[0]['sampling']!r}): {seeds}")
    order = sorted(groups, key=lambda k: (_strategy_rank(k[0]), k[2], k[1]))
    return {key: groups[key] for key in order}


def _milli(mean: float, std: float) -> str:
    """'mean ± std' in milli-units; a dash where the test set has no such label (energy-only CASPT2)."""
    return "–" if not np.isfinite(mean) else f"{1000 * mean:.2f} ± {1000 * std:.2f}"


def _mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and sample std (ddof=1); std is 0 for a single value."""
    array = np.asarray(values, dtype=float)
    return float(array.mean()), float(array.std(ddof=1)) if array.size > 1 else 0.0


def summarise(records: list[dict]) -> list[dict]:
    """One row per (strategy, fraction, sampling) with the mean and std over seeds of both MAEs
    and of the energy bias.

    Rows are ordered by strategy (mfi, single, transfer, delta, multihead, then others
    alphabetically), then sampling, then fraction.
    """
    _check(records)
    rows = []
    for (strategy, fraction, sampling), runs in _groups(records).items():
        n_hifi = [r["n_hifi_train"] for r in runs]
        row: dict[str, Any] = {
            "strategy": strategy, "sampling": sampling, "fraction": fraction,
            "n_seeds": len(runs), "seeds": [r["seed"] for r in runs],
            "n_hifi_train": int(n_hifi[0]) if len(set(n_hifi)) == 1 else float(np.mean(n_hifi)),
        }  # fmt: skip
        for metric in ("energy_mae_per_atom", "force_mae", "energy_bias_per_atom"):  # bias: NaN if a run lacks it
            row[f"{metric}_mean"], row[f"{metric}_std"] = _mean_std([r.get(metric, np.nan) for r in runs])
        for metric in OPTIONAL_COLUMNS:
            if any(metric in r for r in runs):
                row[f"{metric}_mean"], row[f"{metric}_std"] = _mean_std([r.get(metric, np.nan) for r in runs])
        rows.append(row)
    return rows


def _percent(fraction: float) -> str:
    return format(round(100 * fraction, 6), "g")


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    raise TypeError(f"cannot write {type(value).__name__} to results.json")


def _write_text(path: Path, text: str) -> None:
    def write(tmp: str) -> None:
        Path(tmp).write_text(text, encoding="utf-8")

    atomic_write(path, write)


def _save_figure(figure: Figure, path: Path) -> None:
    atomic_write(path, lambda tmp: figure.savefig(tmp, format="png", dpi=120))


def _learning_curve(summary: list[dict], path: Path) -> None:
    """MAE vs fraction per strategy: energy, and forces unless no test structure has them."""
    metrics = [("energy_mae_per_atom", "test energy MAE (meV/atom)"), ("force_mae", "test force MAE (meV/Å)")]
    metrics = [m for m in metrics if any(np.isfinite(row[f"{m[0]}_mean"]) for row in summary)] or metrics[:1]
    figure = Figure(figsize=(5 * len(metrics), 4), layout="constrained")
    panels = np.atleast_1d(figure.subplots(1, len(metrics)))
    lines: dict[tuple[str, str], list[dict]] = defaultdict(list)
    for row in summary:
        lines[(row["strategy"], row["sampling"])].append(row)
    for (strategy, sampling), rows in lines.items():
        x = [100 * row["fraction"] for row in rows]
        for panel, (metric, _) in zip(panels, metrics):
            y = [1000 * row[f"{metric}_mean"] for row in rows]
            err = [1000 * row[f"{metric}_std"] for row in rows]
            panel.errorbar(x, y, yerr=err, marker="o", capsize=3, label=f"{strategy} ({sampling})")
    percents = sorted({100 * row["fraction"] for row in summary})
    for panel, (_, ylabel) in zip(panels, metrics):
        panel.set_xscale("log")
        panel.set_xticks(percents, [_percent(p / 100) for p in percents])
        panel.minorticks_off()
        panel.set_xlabel("high-fidelity training fraction (%)")
        panel.set_ylabel(ylabel)
        panel.grid(True, which="both", alpha=0.3)
    panels[-1].legend(fontsize="small")
    _save_figure(figure, path)


def _parity_plot(arrays: dict[str, np.ndarray], title: str, path: Path) -> None:
    figure = Figure(figsize=(10, 4.5), layout="constrained")
    figure.suptitle(title)
    panels = figure.subplots(1, 2)
    for panel, (true, pred), quantity, unit in zip(
        panels, (PARITY_ARRAYS[:2], PARITY_ARRAYS[2:]), ("energy per atom", "force components"), ("eV/atom", "eV/Å")
    ):
        x, y = arrays[true], arrays[pred]
        mae = 1000 * float(np.mean(np.abs(y - x))) if x.size else float("nan")
        panel.scatter(x, y, s=6, alpha=0.6)
        if x.size:
            low, high = float(min(x.min(), y.min())), float(max(x.max(), y.max()))
            panel.plot([low, high], [low, high], color="black", linewidth=0.8)  # y = x
        panel.set_title(f"{quantity}: MAE {mae:.2f} m{unit}")
        panel.set_xlabel(f"true ({unit})")
        panel.set_ylabel(f"predicted ({unit})")
        panel.set_aspect("equal", adjustable="datalim")
    _save_figure(figure, path)


UNREADABLE_PARITY = (OSError, ValueError, KeyError, zipfile.BadZipFile)  # what load_parity raises on a broken file


def load_parity(path: Path) -> dict[str, np.ndarray]:
    with np.load(path, allow_pickle=False) as data:
        return {name: np.ravel(data[name]).astype(float) for name in PARITY_ARRAYS}


def _parity_plots(groups: dict[tuple[str, float, str], list[dict]], report_dir: Path) -> tuple[list[str], list[str]]:
    """Draw one parity plot per group from its lowest-seed run with a readable parity file (a
    run restored from an earlier report may have none); return (plot paths, reasons for skips)."""
    made, skipped = [], []
    for (strategy, fraction, sampling), runs in groups.items():
        reasons = []
        for run in runs:
            where = f"{strategy} ({sampling}) at {_percent(fraction)} %, seed {run['seed']}"
            if not run.get("parity"):
                reasons.append(f"{where}: no parity file recorded")
                continue
            source = report_dir / run["parity"]
            if not source.is_file():
                reasons.append(f"{where}: parity file `{run['parity']}` not found")
                continue
            try:
                arrays = load_parity(source)
            except UNREADABLE_PARITY as error:  # costs one plot, not the report
                reasons.append(f"{where}: parity file `{run['parity']}` unreadable ({type(error).__name__}: {error})")
                continue
            relative = f"parity/{strategy}_{sampling}_{_percent(fraction)}.png"
            _parity_plot(arrays, f"{where}: predicted vs true on the test set", report_dir / relative)
            made.append(relative)
            break
        else:
            skipped.extend(reasons)
    return made, skipped


def _markdown(title: str, header: str, summary: list[dict], records: list[dict], plots: list[str], skipped: list[str]) -> str:
    lines = [f"# {title}", ""]
    if header:
        lines += [header.rstrip("\n"), ""]
    shown = [metric for metric in OPTIONAL_COLUMNS if any(f"{metric}_mean" in row for row in summary)]
    lines += [
        "| strategy | sampling | hifi fraction (%) | hifi structures | seeds | test E MAE (meV/atom) | test F MAE (meV/A) "
        "| test E bias (meV/atom) |" + "".join(f" {OPTIONAL_COLUMNS[metric][0]} |" for metric in shown),
        "|---|---|---:|---:|---:|---:|---:|---:|" + "---:|" * len(shown),
    ]
    for row in summary:
        energy = _milli(row["energy_mae_per_atom_mean"], row["energy_mae_per_atom_std"])
        force = _milli(row["force_mae_mean"], row["force_mae_std"])
        bias = _milli(row["energy_bias_per_atom_mean"], row["energy_bias_per_atom_std"])
        n_hifi = row["n_hifi_train"] if isinstance(row["n_hifi_train"], int) else f"{row['n_hifi_train']:.1f}"
        extra = "".join(f" {OPTIONAL_COLUMNS[m][1](row) if f'{m}_mean' in row else '–'} |" for m in shown)
        lines.append(f"| {row['strategy']} | {row['sampling']} | {_percent(row['fraction'])} | {n_hifi} "
                     f"| {row['n_seeds']} | {energy} | {force} | {bias} |{extra}")  # fmt: skip
    lines += [
        "",
        "Values are mean ± sample standard deviation (ddof = 1) over seeds; a row with a single seed shows ± 0.00;"
        " – means the test structures have no such label. E bias is the mean of predicted minus true energy per atom:"
        " an E MAE close to |E bias| is one offset shared by the test structures (typically the references), not scatter.",
        "",
    ]
    notes: dict[str, list[str]] = {}
    for record in sorted(records, key=lambda r: _strategy_rank(r["strategy"])):
        note = " ".join(str(record.get("note") or "").split())
        if note and note not in notes.setdefault(record["strategy"], []):
            notes[record["strategy"]].append(note)
    if notes:
        lines += ["## Notes", ""]
        lines += [f"- **{strategy}**: {text}" for strategy, texts in notes.items() for text in texts]
        lines.append("")
    lines += ["## Figures", "", "![Learning curves](learning_curve.png)", ""]
    if plots:
        lines += ["Parity plots (lowest seed of each group with a parity file; the seed is in the title):", ""]
        lines += [f"- [{Path(plot).stem}]({plot})" for plot in plots]
        lines.append("")
    if skipped:
        lines += ["Parity plots not drawn:", ""]
        lines += [f"- {reason}" for reason in skipped]
        lines.append("")
    return "\n".join(lines)


def write_report(records: list[dict], report_dir, title: str = "Multi-fidelity comparison", header: str = "") -> Path:
    """Write results.json, report.md, learning_curve.png and parity/*.png into report_dir.

    Parity paths in the records are relative to report_dir. Returns the path of report.md.
    """
    summary = summarise(records)
    report_dir = Path(report_dir)
    report_dir.mkdir(parents=True, exist_ok=True)
    results = json.dumps({"title": title, "records": records, "summary": summary}, indent=1, default=_json_default)
    _write_text(report_dir / "results.json", results + "\n")
    _learning_curve(summary, report_dir / "learning_curve.png")
    plots, skipped = _parity_plots(_groups(records), report_dir)
    report = report_dir / "report.md"
    _write_text(report, _markdown(title, header, summary, records, plots, skipped))
    return report


def read_results(report_dir) -> dict:
    """The title, records and summary that write_report saved in report_dir/results.json."""
    path = Path(report_dir) / "results.json"
    try:
        results = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as error:
        raise ValueError(f"{path}: no results file") from error
    except (ValueError, UnicodeDecodeError) as error:
        raise ValueError(f"{path}: not valid JSON ({error})") from error
    if not isinstance(results, dict) or not isinstance(results.get("records"), list):
        raise ValueError(f"{path}: expected an object with a 'records' list")
    return results
