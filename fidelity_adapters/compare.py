"""The comparison harness: strategies x high-fidelity fractions x samplings x seeds on one
data set, every run on the paper's split, and a report.

Layout of the output directory (everything needed to resume and to reproduce):
    settings.json                      the settings of the sweep
    splits/<sampling>_f<pct>_s<seed>.json
    lofi_models/s<seed>/<fidelity>/    the low-fidelity-only model of a seed (transfer, delta, encoder)
    runs/<strategy>/<sampling>/f<pct>/s<seed>/   training checkpoint, model, parity.npz, record.json
    report.md, results.json, learning_curve.png, parity/
A run with a record.json is done; a run without one resumes from its training checkpoint.
"""

from __future__ import annotations

import inspect
import json
import os
import platform
import time
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path

import numpy as np
import torch
import yaml

from backbones import BACKBONES

from .data import LabelledStructure, fidelities_of, read_structures, subsample_geometries
from .evaluation import energy_bias, error_metrics, parity_arrays
from .recipes import RECIPES
from .report import UNREADABLE_PARITY, load_parity, save_parity, write_report
from .sampling import METHODS, select
from .serialization import atomic_write
from .splits import Split, paper_split
from .strategies import FROM_PRETRAINED, FROM_SCRATCH, STRATEGIES, Task, fit
from .strategies.lofi_model import lofi_model
from .training import TrainConfig

SMALL_MODEL = {"node_dim": 16, "edge_dim": 16, "hidden": [16], "readout_hidden": [16, 16]}


@dataclass
class CompareSettings:
    # extxyz files, each a path or {path, start, every, limit}; empty: the bundled PBE/r2SCAN/SCAN water clusters
    data: list[str | dict] = field(default_factory=list)
    lofi: list[str] = field(default_factory=lambda: ["PBE"])
    hifi: str = "r2SCAN"
    strategies: list[str] = field(default_factory=lambda: list(FROM_SCRATCH))
    fractions: list[float] = field(default_factory=lambda: [0.05, 0.1, 0.2])
    strategy_fractions: dict[str, list[float]] = field(default_factory=dict)  # per-strategy fractions, e.g. single
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    sampling: list[str] = field(default_factory=lambda: ["random"])
    every: int = 1  # keep every n-th frame of each data file (a file's own `every` wins)
    limit: int | None = None  # at most this many frames per file (a file's own `limit` wins)
    geometries: int | None = None  # at most this many geometries (struct_id) overall, all their labels kept
    holdout_fraction: float = 0.2
    epochs: int = 100
    batch_size: int = 16
    max_atoms: int | None = None  # atoms per training batch at most (TrainConfig.max_atoms); None: no limit
    learning_rate: float = 1e-3
    force_weight: float = 1.0
    refit_references: bool = False  # after training, refit each model's references around its network
    patience: int = 200
    backbone: str = "M3GNet"  # M3GNet, MACEStyle or NequIPStyle (recipes.RECIPES)
    model: dict = field(default_factory=dict)  # backbone options, e.g. {"node_dim": 32}
    freeze: list[str] = field(default_factory=lambda: ["atom_embedding"])  # transfer learning
    pretrain_fidelity: str | None = None  # the low fidelity transfer/delta build on; default the last of lofi
    pretrained: str | None = None  # foundation model of zero-shot / ft-mfi / ft-transfer / ft-delta (pretrained/)
    pretrained_base: str | None = None  # its own level the target starts from; default its first
    finetune: dict = field(default_factory=dict)  # FinetuneConfig options of the ft-* strategies (replay, trainable, ...)

    @classmethod
    def from_dict(cls, values: dict) -> "CompareSettings":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown comparison settings {unknown}; known: {sorted(known)}")
        return cls(**values)

    @classmethod
    def from_yaml(cls, path: str | Path) -> "CompareSettings":
        try:
            values = yaml.safe_load(Path(path).read_text()) or {}
        except (OSError, yaml.YAMLError) as error:
            raise ValueError(f"{path}: cannot read the comparison config ({error})") from None
        if not isinstance(values, dict):
            raise ValueError(f"{path}: the comparison config must be a mapping of settings")
        return cls.from_dict(values)

    def fractions_of(self, strategy: str) -> list[float]:
        return list(self.strategy_fractions.get(strategy, self.fractions))

    def check(self) -> None:
        data_files(self)
        for name in (*self.strategies, *self.strategy_fractions):
            if name not in STRATEGIES:
                raise ValueError(f"unknown strategy {name!r}; known: {list(STRATEGIES)}")
        if self.backbone not in RECIPES:
            raise ValueError(f"unknown backbone {self.backbone!r}; known: {list(RECIPES)}")
        if "multihead" in self.strategies and "n_heads" not in inspect.signature(BACKBONES[self.backbone]).parameters:
            raise ValueError(f"multihead needs a backbone with one readout head per fidelity; {self.backbone} has one head")
        for method in self.sampling:
            if method not in METHODS:
                raise ValueError(f"unknown sampling {method!r}; known: {list(METHODS)}")
        if not self.strategies or not self.seeds or not self.sampling:
            raise ValueError("strategies, seeds and sampling must each name at least one")
        self._check_pretrained()
        if "transfer" in self.strategies:  # a freeze prefix the backbone lacks fails now, not after the low-fidelity model
            from .strategies.transfer import freeze

            try:
                probe = RECIPES[self.backbone](["H"], ["probe"], seed=0, **self.model)
            except TypeError as error:
                raise ValueError(f"model options {self.model} do not fit backbone {self.backbone}: {error}") from None
            freeze(probe, self.freeze)

    def _check_pretrained(self) -> None:
        """A foundation model that is missing, or options it would not take, fail here, not mid-sweep."""
        wanted = [name for name in self.strategies if name in FROM_PRETRAINED]
        if not wanted:
            if self.pretrained or self.pretrained_base or self.finetune:
                raise ValueError(f"pretrained / pretrained_base / finetune are set but no strategy uses them ({list(FROM_PRETRAINED)})")
            return
        if self.pretrained is None:
            raise ValueError(f"strategies {wanted} start from a foundation model: set `pretrained` (see `fidelity-adapters pretrained`)")
        from .finetune import FinetuneConfig
        from .pretrained import entry

        model = entry(self.pretrained)
        where, why = model.locate()
        if where is None:
            raise ValueError(f"pretrained {self.pretrained}: {why}")
        model.level(self.pretrained_base, what="pretrained_base")
        try:
            FinetuneConfig(**self.finetune).check()
        except TypeError as error:
            raise ValueError(f"finetune options {self.finetune}: {error}") from None


QUICK = {"epochs": 2, "fractions": [0.05, 0.1], "strategy_fractions": {}, "seeds": [0], "batch_size": 8, "model": SMALL_MODEL}


FILE_OPTIONS = ("path", "start", "every", "limit")


def data_files(settings: CompareSettings) -> list[dict]:
    """Each data entry as {path, start, every, limit}: a plain path takes the sweep-wide
    `every`/`limit`, a mapping may set its own (files differ in size and frame order)."""
    files = []
    for k, entry in enumerate(settings.data):
        entry = {"path": entry} if isinstance(entry, str) else dict(entry)
        unknown = sorted(set(entry) - set(FILE_OPTIONS))
        if unknown or "path" not in entry:
            raise ValueError(f"data entry {k}: {entry} needs a path and only {list(FILE_OPTIONS)} (unknown: {unknown})")
        files.append({"start": 0, "every": settings.every, "limit": settings.limit, **entry})
    return files


def load_data(settings: CompareSettings) -> list[LabelledStructure]:
    if not settings.data:
        from .bundled import water_clusters

        return water_clusters()
    structures = []
    for file in data_files(settings):
        structures.extend(read_structures(file["path"], every=file["every"], limit=file["limit"], start=file["start"]))
    if settings.geometries is not None:
        structures = subsample_geometries(structures, settings.geometries)
    found = fidelities_of(structures)
    for name in (*settings.lofi, settings.hifi):
        if name not in found:
            raise ValueError(f"fidelity {name!r} is in no data file; the data has {found}")
    return structures


def cpu_model() -> str:
    """The CPU's model name (/proc/cpuinfo on Linux), for reports and benchmarks."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def machine(device: str | torch.device = "cpu") -> str:
    """Where a run ran, for its report: the GPU when it used one, then the host's cores, torch and threads."""
    host = f"{os.cpu_count()} cores ({cpu_model()}), torch {torch.__version__}, {torch.get_num_threads()} torch threads"
    device = torch.device(device)
    return f"{torch.cuda.get_device_name(device)} GPU on {host}" if device.type == "cuda" else host


def _percent(fraction: float) -> str:
    return f"{100 * fraction:g}"


def _describe_file(file: dict) -> str:
    parts = [f"from frame {file['start']}" if file["start"] else "", f"one frame in {file['every']}" if file["every"] > 1 else "",
             f"at most {file['limit']} frames" if file["limit"] else ""]  # fmt: skip
    used = [p for p in parts if p]
    return f"{file['path']} ({', '.join(used)})" if used else file["path"]


def _describe_data(s: CompareSettings) -> str:
    if not s.data:
        return "bundled water clusters (fidelity_adapters/data_files)"
    files = ", ".join(_describe_file(file) for file in data_files(s))
    return files + (f"; {s.geometries} geometries evenly spread" if s.geometries else "")


def _no_choice(split: Split, method: str) -> str:
    if method != "random" and len(split.hifi_train) == split.settings.get("n_candidates"):
        return f"{method} sampling had no choice: all {len(split.hifi_train)} candidate structures were used"
    return ""


def _write_json(path: Path, value) -> None:
    atomic_write(path, lambda tmp: Path(tmp).write_text(json.dumps(value, indent=1)))


class Comparison:
    """One sweep in one directory; `run()` does what is not done yet and writes the report."""

    def __init__(self, settings: CompareSettings, out_dir: str | Path, command: str = "", encoder=None):
        """`encoder(structures) -> (n, d) array` describes structures for DIRECT / narrow
        sampling; by default the features of the seed's low-fidelity model."""
        settings.check()
        self.settings, self.out, self.command, self.encoder = settings, Path(out_dir), command, encoder
        self._check_settings_file()
        self.structures = load_data(settings)
        self.config = TrainConfig(
            max_epochs=settings.epochs, learning_rate=settings.learning_rate, batch_size=settings.batch_size,
            max_atoms=settings.max_atoms, force_weight=settings.force_weight, patience=settings.patience, progress=False,
            refit_references=settings.refit_references,
        )  # fmt: skip
        self._features: dict[int, dict[int, list[float]]] = {}

    def _check_settings_file(self) -> None:
        """A resumed sweep may add strategies, fractions, seeds or samplings, but everything that
        changes what a finished run means must stay the same."""
        path = self.out / "settings.json"
        current = json.loads(json.dumps(asdict(self.settings)))  # tuples -> lists, as saved
        if path.exists():
            saved = json.loads(path.read_text())
            # a setting newer than the saved sweep was then at its default
            defaults = json.loads(json.dumps(asdict(CompareSettings())))
            extendable = {"strategies", "fractions", "strategy_fractions", "seeds", "sampling"}
            changed = [k for k in current if k not in extendable and saved.get(k, defaults[k]) != current[k]]
            if changed:
                raise ValueError(f"{self.out} holds a sweep with other settings ({', '.join(changed)}); use a new directory")
        self.out.mkdir(parents=True, exist_ok=True)
        _write_json(path, current)

    def runs(self) -> list[tuple[str, str, float, int]]:
        s = self.settings
        return [(strategy, method, fraction, seed) for seed in s.seeds for method in s.sampling
                for strategy in s.strategies for fraction in s.fractions_of(strategy)]  # fmt: skip

    def task(self, split: Split, seed: int, run_dir: Path) -> Task:
        s = self.settings
        config = replace(self.config, seed=seed)
        return Task(self.structures, split, list(s.lofi), s.hifi, config, run_dir, self.out / "lofi_models" / f"s{seed}",
                    dict(s.model), s.pretrain_fidelity, tuple(s.freeze), s.backbone, s.pretrained, s.pretrained_base,
                    dict(s.finetune))  # fmt: skip

    def split(self, method: str, fraction: float, seed: int) -> Split:
        s = self.settings
        path = self.out / "splits" / f"{method}_f{_percent(fraction)}_s{seed}.json"
        if path.exists():
            return Split.load(path)
        choose = None if method == "random" else self._chooser(method, seed)
        split = paper_split(self.structures, s.lofi, s.hifi, fraction, seed, s.holdout_fraction, choose)
        split.settings["sampling"] = method
        split.save(path)
        return split

    def _chooser(self, method: str, seed: int):
        """DIRECT / narrow pick from features of the seed's low-fidelity model (it never sees
        high-fidelity labels, so the choice does not peek at what it selects)."""

        def choose(candidate_ids: list[int], k: int) -> list[int]:
            features = self._encode(seed)
            rows = [features[i] for i in candidate_ids]
            return [candidate_ids[i] for i in select(method, k, seed, features=np.array(rows))]

        return choose

    def _encode(self, seed: int) -> dict[int, list[float]]:
        """Feature vector of every high-fidelity structure (by index), once per seed."""
        if seed not in self._features:
            s = self.settings
            hifi_ids = [k for k, x in enumerate(self.structures) if x.fidelity == s.hifi]
            hifi = [self.structures[k] for k in hifi_ids]
            if self.encoder is not None:
                vectors = np.asarray(self.encoder(hifi), dtype=float)
            else:
                base_split = paper_split(self.structures, s.lofi, s.hifi, 0.0, seed, s.holdout_fraction)
                task = self.task(base_split, seed, self.out / "lofi_models" / f"s{seed}")
                vectors = lofi_model(task).structure_features(hifi, task.base_fidelity)
            self._features[seed] = dict(zip(hifi_ids, vectors.tolist()))
        return self._features[seed]

    def check_splits(self) -> None:
        """Every (fraction, seed) must be possible before hours of training start."""
        s = self.settings
        for fraction, seed in {(fraction, seed) for _, _, fraction, seed in self.runs()}:
            paper_split(self.structures, s.lofi, s.hifi, fraction, seed, s.holdout_fraction)

    def run_one(self, strategy: str, method: str, fraction: float, seed: int) -> dict:
        run_dir = self.out / "runs" / strategy / method / f"f{_percent(fraction)}" / f"s{seed}"
        record_path = run_dir / "record.json"
        if record_path.exists():
            return self._with_energy_bias(json.loads(record_path.read_text()))
        split = self.split(method, fraction, seed)
        task = self.task(split, seed, run_dir)
        start = time.perf_counter()
        fitted = fit(strategy, task)
        test = task.pick(split.test)
        parity = parity_arrays(test, fitted.predict(test))
        save_parity(run_dir / "parity.npz", **parity)
        record = {
            "strategy": strategy, "fraction": fraction, "seed": seed, "sampling": method, "target": self.settings.hifi,
            "n_hifi_train": len(split.hifi_train), "n_lofi_train": len(split.lofi_train), "n_test": len(split.test),
            **{k: v for k, v in error_metrics(parity, len(test)).items() if k != "n_structures"},
            "note": "; ".join(filter(None, [fitted.note, _no_choice(split, method)])), "parity": str((run_dir / "parity.npz").relative_to(self.out)),
            "seconds": round(time.perf_counter() - start, 1), **fitted.details,
        }  # fmt: skip
        _write_json(record_path, record)
        return record

    def _with_energy_bias(self, record: dict) -> dict:
        """A run finished before the bias was recorded gets it from its saved parity arrays
        (if they cannot be read, the report shows no bias for it and says why for the plot)."""
        if "energy_bias_per_atom" not in record and record.get("parity"):
            try:
                record["energy_bias_per_atom"] = energy_bias(load_parity(self.out / record["parity"]))
            except UNREADABLE_PARITY:
                pass
        return record

    def run(self) -> Path:
        self.check_splits()
        records, todo = [], self.runs()
        for k, (strategy, method, fraction, seed) in enumerate(todo, 1):
            record = self.run_one(strategy, method, fraction, seed)
            records.append(record)
            print(f"[{k}/{len(todo)}] {strategy:<9} {method:<6} {_percent(fraction):>4} % seed {seed}: "
                  f"E {1000 * record['energy_mae_per_atom']:.2f} meV/atom, F {1000 * record['force_mae']:.1f} meV/A "
                  f"({record['seconds']:.0f} s)", flush=True)  # fmt: skip
        title = f"{self.settings.hifi} from {' + '.join(self.settings.lofi)}: strategy comparison"
        return write_report(records, self.out, title=title, header=self.header())

    def header(self) -> str:
        s = self.settings
        counts = {name: sum(x.fidelity == name for x in self.structures) for name in fidelities_of(self.structures)}
        builds_a_model = any(name in FROM_SCRATCH or name == "ft-delta" for name in s.strategies)  # the others start pretrained
        model = f", backbone {s.backbone}, model options {s.model or 'defaults'}" if builds_a_model else ""
        freeze = f"; transfer freezes {s.freeze}" if "transfer" in s.strategies else ""
        lines = [
            f"Command: `{self.command}`" if self.command else "",
            f"Data: {_describe_data(s)}; structures per fidelity {counts}.",
            f"Split: Ko & Ong Fig. 2, held out {s.holdout_fraction:.0%} (half validation, half test), the same for every "
            f"strategy and fraction of a seed. Training: {s.epochs} epochs max, batch {s.batch_size}, lr {s.learning_rate}, "
            f"force weight {s.force_weight}{model}{freeze}.",
            self._pretrained_line(),
            f"Machine: {machine()}.",
        ]
        return "\n\n".join(line for line in lines if line)

    def _pretrained_line(self) -> str:
        s = self.settings
        if not any(name in FROM_PRETRAINED for name in s.strategies):
            return ""
        from .pretrained import entry

        return (
            f"Foundation model: {s.pretrained} from its level {entry(s.pretrained).level(s.pretrained_base)}; fine-tuning options "
            f"{s.finetune or 'defaults'}, the epochs, batch and lr above. ft-transfer (no replay) gets its epochs scaled by "
            "(1 + replay ratio) so that it takes as many optimizer steps as ft-mfi with replay; the steps column gives "
            "the optimizer steps each run took (early stopping keeps the best epoch, not the last)."
        )


def compare(settings: CompareSettings, out_dir: str | Path, command: str = "", encoder=None) -> Path:
    return Comparison(settings, out_dir, command, encoder).run()


def settings_with(base: CompareSettings, overrides: dict) -> CompareSettings:
    return CompareSettings.from_dict({**asdict(base), **{k: v for k, v in overrides.items() if v is not None}})


__all__ = ["QUICK", "CompareSettings", "Comparison", "compare", "settings_with"]
