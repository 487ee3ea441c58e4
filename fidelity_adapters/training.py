"""Training a potential on structures of several fidelities (Ko & Ong eq. 1).

Loss = MSE(E/N) + w_f * MSE(F components) [+ w_s * MSE(stress)], each term over the
structures that have that label (NaN energy, missing forces or stress are masked, never
treated as zero). Adam with cosine decay to `final_lr_fraction` of the learning rate over
`max_epochs`, early stopping on validation loss, per-fidelity validation metrics.

Structures on disk (shards.ShardedStructures, from `fidelity-adapters prepare`) are streamed:
their graphs are built batch by batch (in `workers` DataLoader processes), so memory does not
grow with their number. With an output directory, `checkpoint.pt` (everything needed to resume) and
`best_model.safetensors` are written atomically after every epoch; calling train() again
on the same directory resumes from the last finished epoch.
"""

from __future__ import annotations

import copy
import hashlib
import itertools
import json
import math
import os
import socket
import sys
import time
import warnings
from collections import Counter
from contextlib import contextmanager, nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import torch
from filelock import FileLock, Timeout
from torch_geometric.data import Batch
from tqdm.auto import tqdm

from .batching import atom_limited
from .data import LabelledStructure, fidelities_of
from .distributed import World, world
from .fidelity_sampling import epoch_order, probabilities
from .potential import Potential
from .serialization import atomic_write, metadata_of, save_potential
from .shards import ShardedStructures


@dataclass
class TrainConfig:
    max_epochs: int = 100
    learning_rate: float = 1e-3
    final_lr_fraction: float = 0.01
    batch_size: int = 16
    max_atoms: int | None = None  # atoms per batch at most (a larger structure goes alone); None: batch_size alone limits
    force_weight: float = 1.0
    stress_weight: float = 0.0
    patience: int = 200
    seed: int = 0
    progress: bool = True
    monitor: str | None = None  # fidelity whose validation loss drives early stopping; None: all
    refit_references: bool = False  # after training, refit the references around the best network
    fidelity_weights: dict[str, float] | None = None  # loss weight of each fidelity's structures; absent: 1
    workers: int = 0  # DataLoader processes that build the graphs of on-disk (sharded) data; 0: in this process
    sampling_ratios: dict[str, float] | None = None  # each fidelity's share of an epoch's draws (fidelity_sampling.py)
    sampling_temperature: float | None = None  # or shares proportional to n_fidelity^(1/T); None (both): uniform shuffle

    def __post_init__(self) -> None:
        """Out-of-range settings are errors here, before anything trains (epochs 0 would save an untrained model)."""
        positive = {"max_epochs": self.max_epochs, "learning_rate": self.learning_rate, "batch_size": self.batch_size,
                    "final_lr_fraction": self.final_lr_fraction}  # fmt: skip
        for name, value in positive.items():
            if not value > 0:
                raise ValueError(f"TrainConfig.{name} = {value}: must be > 0")
        nonnegative = {"force_weight": self.force_weight, "stress_weight": self.stress_weight, "patience": self.patience,
                       "workers": self.workers}  # fmt: skip
        for name, value in nonnegative.items():
            if not value >= 0:
                raise ValueError(f"TrainConfig.{name} = {value}: must be >= 0")
        if self.max_atoms is not None and not self.max_atoms > 0:
            raise ValueError(f"TrainConfig.max_atoms = {self.max_atoms}: must be > 0 (or None, no atom limit)")


@dataclass
class TrainResult:
    best_epoch: int
    best_val_loss: float
    history: list[dict] = field(default_factory=list)

    @property
    def optimizer_steps(self) -> int:
        """Steps taken over all epochs: with an atom limit an epoch's count depends on its order."""
        return sum(entry["steps"] for entry in self.history)

    @property
    def training_seconds(self) -> float:
        """Wall time of the epochs (training and validation), summed over every resume, so a run
        killed and resumed reports all it cost; NaN where a checkpoint predates epoch timing."""
        return sum(entry["seconds"] for entry in self.history)


def _check_data(potential: Potential, train, val, config: TrainConfig) -> None:
    if not train:
        raise ValueError("the training set is empty")
    if not val:
        raise ValueError("the validation set is empty")
    if config.workers and not isinstance(train, ShardedStructures):
        raise ValueError(f"workers={config.workers} builds the graphs of on-disk data (`fidelity-adapters prepare`); "
                         "in-memory structures have theirs built once, before training")  # fmt: skip
    for name in fidelities_of(itertools.chain(train, val)):
        potential.fidelity_state.index(name)
    if config.monitor is not None and config.monitor not in fidelities_of(val):
        raise ValueError(f"monitored fidelity {config.monitor!r} has no validation structures")
    for name, weight in (config.fidelity_weights or {}).items():
        potential.fidelity_state.index(name)
        if not weight >= 0:
            raise ValueError(f"fidelity_weights[{name!r}] = {weight}: a loss weight must be >= 0")


def _structure_weights(potential: Potential, batch, config: TrainConfig, dtype) -> torch.Tensor | None:
    """Each structure's loss weight from its fidelity (None: all 1, the plain mean)."""
    if not config.fidelity_weights:
        return None
    table = [float(config.fidelity_weights.get(name, 1.0)) for name in potential.fidelities]
    return torch.tensor(table, dtype=dtype, device=batch.fidelity.device)[batch.fidelity]


def _loss_terms(potential: Potential, batch, config: TrainConfig, training: bool) -> dict:
    """Masked squared-error sums and counts for energy/atom, force components and stress.
    Forces are computed only when the batch has force labels that count: an energy-only batch
    (CASPT2, say) then costs one backward pass in training, not two. With fidelity weights
    the squared errors are weighted by their structure's fidelity (counts and MAEs are not),
    so a weight of 2 counts each of that fidelity's labels twice in the mean."""
    want_forces = config.force_weight > 0 and bool(torch.isfinite(batch.forces).any())
    out = potential(batch, forces=want_forces, stress=config.stress_weight > 0, training=training)
    dtype = out["energy"].dtype
    natoms = batch.natoms.to(dtype)
    e_true = batch.energy.to(dtype)
    e_mask = torch.isfinite(e_true)
    e_diff = torch.where(e_mask, (out["energy"] - e_true) / natoms, torch.zeros_like(e_true))
    f_true = batch.forces.to(dtype)
    f_mask = torch.isfinite(f_true) & want_forces
    f_diff = torch.where(f_mask, out["forces"] - f_true, torch.zeros_like(f_true)) if want_forces else torch.zeros_like(f_true)
    weights = _structure_weights(potential, batch, config, dtype)
    e_sq, f_sq = e_diff**2, f_diff**2
    if weights is not None:
        e_sq, f_sq = e_sq * weights, f_sq * weights[batch.batch][:, None]
    terms = {
        "e_se": e_sq.sum(), "e_ae": e_diff.abs().sum(), "e_n": e_mask.sum(),
        "f_se": f_sq.sum(), "f_ae": f_diff.abs().sum(), "f_n": f_mask.sum(),
    }  # fmt: skip
    if config.stress_weight > 0:
        s_true = batch.stress.to(dtype)
        s_mask = torch.isfinite(s_true)
        s_diff = torch.where(s_mask, out["stress"] - s_true, torch.zeros_like(s_true))
        s_sq = s_diff**2 if weights is None else s_diff**2 * weights[:, None, None]
        terms.update(s_se=s_sq.sum(), s_n=s_mask.sum())
    return terms


def _loss(terms: dict, config: TrainConfig) -> torch.Tensor:
    loss = terms["e_se"] / terms["e_n"].clamp(min=1) + config.force_weight * terms["f_se"] / terms["f_n"].clamp(min=1)
    if "s_se" in terms:
        loss = loss + config.stress_weight * terms["s_se"] / terms["s_n"].clamp(min=1)
    return loss


def validation_metrics(potential: Potential, graphs_by_fidelity: dict, config: TrainConfig, world: World = World()) -> dict:
    """MAEs per fidelity, and the loss over the monitored fidelity's graphs (all if None).
    Under several processes each rank evaluates its share and the sums are added up."""
    keys = ["e_se", "e_ae", "e_n", "f_se", "f_ae", "f_n"] + (["s_se", "s_n"] if config.stress_weight > 0 else [])
    totals: dict[str, float] = {}
    metrics: dict[str, float] = {}
    for name, (graphs, sizes) in graphs_by_fidelity.items():
        sums = dict.fromkeys(keys, 0.0)
        mine = world.shard(range(len(graphs)))
        batches = atom_limited(mine, [sizes[k] for k in mine], config.batch_size, config.max_atoms)
        for chunk in batched_graphs(graphs, batches, config.workers):
            for key, value in _loss_terms(potential, Batch.from_data_list(chunk), config, training=False).items():
                sums[key] += float(value.detach())
        if world.size > 1:
            sums = dict(zip(keys, world.sum(torch.tensor([sums[k] for k in keys], dtype=torch.float64)).tolist()))
        if config.monitor in (None, name):
            for key, value in sums.items():
                totals[key] = totals.get(key, 0.0) + value
        metrics[f"{name}/energy_mae_per_atom"] = sums["e_ae"] / sums["e_n"] if sums["e_n"] else float("nan")
        metrics[f"{name}/force_mae"] = sums["f_ae"] / sums["f_n"] if sums["f_n"] else float("nan")
    metrics["loss"] = float(_loss({k: torch.tensor(v) for k, v in totals.items()}, config))
    return metrics


def training_step(potential: Potential, graphs: list, config: TrainConfig, world: World, parameters: list) -> float:
    """Gradients of the union batch's loss (this rank's `graphs` plus the other ranks'): the
    label counts are summed over the ranks before each rank divides its squared-error sums
    by them, and the gradients are summed after. Returns the union batch's loss."""
    count_keys = ["e_n", "f_n"] + (["s_n"] if config.stress_weight > 0 else [])
    terms = _loss_terms(potential, Batch.from_data_list(graphs), config, training=True) if graphs else None
    counts = torch.tensor([float(terms[k]) if terms else 0.0 for k in count_keys], dtype=torch.float64)
    counts = world.sum(counts)
    loss_value = torch.zeros((), dtype=torch.float64)
    if terms is not None:
        loss = _loss({**terms, **dict(zip(count_keys, counts))}, config)
        loss.backward()
        loss_value = loss.detach().to("cpu", torch.float64)  # where every rank's is, empty shards too
    world.sum_gradients(parameters)
    return float(world.sum(loss_value))


class GraphsOnDemand(torch.utils.data.Dataset):
    """The graphs of structures on disk, built on each access: nothing is held."""

    def __init__(self, potential: Potential, structures: ShardedStructures):
        self.potential, self.structures = potential, structures

    def __len__(self) -> int:
        return len(self.structures)

    def __getitem__(self, index: int):
        return self.potential.graph(self.structures[index])


def graphs_of(potential: Potential, structures: Sequence[LabelledStructure]):
    """Every graph, built now (in-memory data), or on demand (on-disk data)."""
    if isinstance(structures, ShardedStructures):
        return GraphsOnDemand(potential, structures)
    return [potential.graph(s) for s in structures]


def graphs_by_fidelity(potential: Potential, structures: Sequence[LabelledStructure]) -> dict:
    """{fidelity: (its graphs, their numbers of atoms)}."""
    if not isinstance(structures, ShardedStructures):
        grouped: dict[str, tuple[list, list]] = {}
        for s in structures:
            graphs, sizes = grouped.setdefault(s.fidelity, ([], []))
            graphs.append(potential.graph(s))
            sizes.append(len(s))
        return grouped
    positions: dict[str, list[int]] = {}
    sizes: dict[str, list[int]] = {}
    for k, s in enumerate(structures):  # one pass, keeping positions and sizes only
        positions.setdefault(s.fidelity, []).append(k)
        sizes.setdefault(s.fidelity, []).append(len(s))
    return {name: (GraphsOnDemand(potential, structures.subset(ids)), sizes[name]) for name, ids in positions.items()}


def batched_graphs(graphs, batches: list[list[int]], workers: int):
    """The graphs of each batch of indices, in order; built by `workers` processes ahead of use
    when they are built on demand."""
    if not isinstance(graphs, GraphsOnDemand) or workers == 0:
        for indices in batches:
            yield [graphs[k] for k in indices]
        return
    yield from torch.utils.data.DataLoader(graphs, batch_sampler=batches, collate_fn=list, num_workers=workers)


def train(
    potential: Potential,
    train_structures: Sequence[LabelledStructure],
    val_structures: Sequence[LabelledStructure],
    config: TrainConfig | None = None,
    out_dir: str | Path | None = None,
    fit_references: bool = True,
) -> TrainResult:
    """Train in place; the potential ends with the weights of the best validation epoch.

    Parameters with requires_grad=False stay as they are (transfer learning freezes layers
    that way). `fit_references=False` keeps the reference energies and scale the potential
    already has, for a caller that fitted them itself. With `config.refit_references` the
    references are refitted around the best network on the training structures at the end
    (and saved with it); the validation losses of the history are from before. Two runs into
    one out_dir are refused (a lock file there), not left to overwrite each other."""
    config = config or TrainConfig()
    if out_dir is not None:
        metadata_of(potential)  # a model that cannot be saved fails now, not after its first epoch
    cuda = [potential.device.index or 0] if potential.device.type == "cuda" else []
    with torch.random.fork_rng(devices=cuda):  # seeded for this run; the caller's random state is left as it was
        with run_lock(out_dir) if out_dir is not None and world(potential.device).is_main else nullcontext():
            return _train(potential, train_structures, val_structures, config, out_dir, fit_references)


@contextmanager
def run_lock(out_dir: str | Path):
    """Hold out_dir for one run; a second run gets an error naming the holder."""
    out = Path(out_dir)
    owner = out / ".run.lock.owner"
    try:
        out.mkdir(parents=True, exist_ok=True)
        lock = FileLock(out / ".run.lock")
        lock.acquire(timeout=0)
    except Timeout:
        holder = owner.read_text().strip() if owner.exists() else "owner unknown"
        raise ValueError(f"{out} is in use by another run ({holder}); wait for it or use another directory") from None
    except OSError as error:
        raise ValueError(f"{out}: cannot write the run there ({error.strerror or error})") from None
    try:
        owner.write_text(f"pid {os.getpid()} on {socket.gethostname()}, since {time.strftime('%Y-%m-%d %H:%M:%S')}\n")
        yield
    finally:
        owner.unlink(missing_ok=True)
        lock.release()


def _train(potential, train_structures, val_structures, config: TrainConfig, out_dir, fit_references: bool) -> TrainResult:
    _check_data(potential, train_structures, val_structures, config)
    ranks = world(potential.device)
    if ranks.size > 1:
        ranks.check_same("the training and validation data", data_digest(itertools.chain(train_structures, val_structures)))
    torch.manual_seed(config.seed)
    checkpoint_path = Path(out_dir) / "checkpoint.pt" if out_dir is not None else None
    writes = out_dir is not None and ranks.is_main  # rank 0 writes; every rank reads a checkpoint to resume

    trainable = [p for p in potential.parameters() if p.requires_grad]
    if not trainable:
        raise ValueError("every parameter of the potential is frozen; nothing to train")
    optimizer = torch.optim.Adam(trainable, lr=config.learning_rate)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(
        optimizer, T_max=config.max_epochs, eta_min=config.learning_rate * config.final_lr_fraction
    )
    start_epoch, best_loss, best_epoch, history = 0, math.inf, -1, []
    best_state = None
    run_fingerprint = None
    if checkpoint_path is not None:  # as JSON reads it back (tuples become lists)
        run_fingerprint = json.loads(json.dumps(fingerprint(potential, train_structures, val_structures)))
    if checkpoint_path is not None and checkpoint_path.exists():
        state = load_checkpoint(checkpoint_path)
        _check_same_config(checkpoint_path, json.loads(state["config"]), config)
        if "fingerprint" in state:  # checkpoints from before fingerprints resume unchecked
            _check_same_run(checkpoint_path, json.loads(state["fingerprint"]), run_fingerprint)
        for saved in (state["model"], state["best_model"]):  # checkpoints from before reference spans: valid everywhere
            saved.setdefault("fidelity_state.reference_span", potential.fidelity_state.reference_span.clone())
        potential.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        best_state = state["best_model"]
        start_epoch, best_loss, best_epoch = state["epoch"] + 1, state["best_val_loss"], state["best_epoch"]
        history = json.loads(state["history"])
        for entry in history:  # histories from before step counts: their epochs had ceil(n / batch_size) steps
            entry.setdefault("steps", -(-len(train_structures) // config.batch_size))
            entry.setdefault("seconds", math.nan)  # from before epoch timing: unknown
        torch.set_rng_state(state["rng"])
        if state.get("cuda_rng") is not None and potential.device.type == "cuda":
            torch.cuda.set_rng_state(state["cuda_rng"], potential.device)
        if config.progress and ranks.is_main:
            print(f"resuming from {checkpoint_path} after epoch {state['epoch']} (best epoch {best_epoch})", file=sys.stderr)
    elif fit_references:
        potential.fit_references(train_structures)

    train_graphs = graphs_of(potential, train_structures)
    val_graphs = graphs_by_fidelity(potential, val_structures)
    labels = [(s.fidelity, len(s)) for s in train_structures]  # names and sizes only: a stream from disk is not held
    train_fidelities, train_sizes = [name for name, _ in labels], [size for _, size in labels]
    shares = None
    if config.sampling_ratios is not None or config.sampling_temperature is not None:
        shares = probabilities(dict(Counter(train_fidelities)), config.sampling_ratios, config.sampling_temperature)
    generator = torch.Generator().manual_seed(config.seed)

    epochs = range(start_epoch, config.max_epochs)
    bar = tqdm(epochs, desc="training", disable=not (config.progress and ranks.is_main), file=sys.stderr, initial=start_epoch, total=config.max_epochs)
    for epoch in bar:
        if epoch - best_epoch > config.patience and best_epoch >= 0:
            break
        epoch_start = time.perf_counter()
        generator.manual_seed(config.seed * 100003 + epoch)  # same batches after a resume
        potential.train()
        train_loss, n_batches = 0.0, 0
        # the global batches, the same on every rank; the first draw is the one torch's DataLoader
        # made (its workers' base seed) when it shuffled here, which keeps the batches of earlier runs
        torch.empty((), dtype=torch.int64).random_(generator=generator)
        if shares is None:
            order = torch.randperm(len(train_graphs), generator=generator).tolist()
        else:
            order = epoch_order(train_fidelities, shares, generator)
        batches = atom_limited(order, [train_sizes[k] for k in order], config.batch_size, config.max_atoms)
        if ranks.size > 1:  # each rank gets the global batch's fidelity mix, to within one structure per fidelity
            batches = [ranks.shard(sorted(b, key=lambda k: train_fidelities[k])) for b in batches]
        for graphs in batched_graphs(train_graphs, batches, config.workers):
            optimizer.zero_grad()
            train_loss += training_step(potential, graphs, config, ranks, trainable)
            optimizer.step()
            n_batches += 1
        scheduler.step()
        potential.eval()
        metrics = validation_metrics(potential, val_graphs, config, ranks)
        metrics.update(epoch=epoch, train_loss=train_loss / n_batches, lr=scheduler.get_last_lr()[0], steps=n_batches,
                       seconds=time.perf_counter() - epoch_start)  # fmt: skip
        metrics.update({f"{name}/seen": n for name, n in Counter(train_fidelities[k] for k in order).items()})
        history.append(metrics)
        if metrics["loss"] < best_loss:
            best_loss, best_epoch = metrics["loss"], epoch
            best_state = copy.deepcopy(potential.state_dict())
            if writes:
                save_potential(potential, Path(out_dir) / "best_model.safetensors", extra={"epoch": epoch})
        bar.set_postfix(train=f"{metrics['train_loss']:.4g}", val=f"{metrics['loss']:.4g}", best=best_epoch)
        if writes:
            save_checkpoint(checkpoint_path, {
                "model": potential.state_dict(), "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(), "best_model": best_state, "epoch": epoch,
                "best_val_loss": best_loss, "best_epoch": best_epoch, "history": json.dumps(history),
                "rng": torch.get_rng_state(), "cuda_rng": _cuda_rng_state(potential), "config": json.dumps(asdict(config)),
                "fingerprint": json.dumps(run_fingerprint),
            })  # fmt: skip
    bar.close()
    if best_state is not None:
        potential.load_state_dict(best_state)
    if config.refit_references:
        potential.fit_references(train_structures, refit_scale=False, around_network=True)
        if writes:
            save_potential(potential, Path(out_dir) / "best_model.safetensors", extra={"epoch": best_epoch})
    return TrainResult(best_epoch=best_epoch, best_val_loss=best_loss, history=history)


def _cuda_rng_state(potential: Potential) -> torch.Tensor | None:
    """The random state of the potential's GPU (None on CPU), saved so a resume continues it."""
    return torch.cuda.get_rng_state(potential.device) if potential.device.type == "cuda" else None


def _library_version(run_fingerprint: dict) -> str | None:
    """Take the third-party library's version out of a fingerprint's model config (in place):
    'sevenn 0.13.0', or None for our own backbones."""
    config = run_fingerprint.get("model", {}).get("backbone_config", {})
    version = config.pop("version", None) if isinstance(config, dict) else None
    return None if version is None else f"{config.get('library')} {version}"


def _changes(saved: dict, current: dict, ignored=()) -> list[str]:
    """'key: saved -> current' for every entry of current that differs from the saved one."""
    return [f"{k}: {saved.get(k)!r} -> {v!r}" for k, v in current.items() if k not in ignored and saved.get(k) != v]


def _check_same_config(path: Path, saved: dict, config: TrainConfig) -> None:
    """A resumed run must continue the same schedule; anything else needs a new directory."""
    changed = _changes(saved, asdict(config), ignored={"progress", "refit_references", "workers"})  # these do not change the schedule
    if changed:
        raise ValueError(f"{path} was written with other settings ({'; '.join(changed)}); "
                         "resume with the same settings or train into a new directory")  # fmt: skip


def data_digest(structures: Iterable[LabelledStructure]) -> str:
    """SHA-256 of the structures in order: geometry, fidelity name and labels."""
    digest = hashlib.sha256()
    for s in structures:
        digest.update(s.fidelity.encode() + b"\0")
        for array in (s.numbers, s.positions, s.cell, s.pbc, np.float64(s.energy), s.forces, s.stress):
            digest.update(b"-" if array is None else np.ascontiguousarray(array).tobytes())
    return digest.hexdigest()


def fingerprint(potential: Potential, train_structures, val_structures) -> dict:
    """What a checkpoint's weights mean: the model (fidelity order included) and the data split."""
    meta = metadata_of(potential)
    return {
        "fidelities": potential.fidelities,
        "elements": potential.elements,
        "model": {k: meta[k] for k in ("backbone", "backbone_config", "dtype", "injection")},
        "training data": f"{len(train_structures)} structures, sha256 {data_digest(train_structures)[:16]}",
        "validation data": f"{len(val_structures)} structures, sha256 {data_digest(val_structures)[:16]}",
    }


def _check_same_run(path: Path, saved: dict, current: dict) -> None:
    """Resuming with other data, another split or another fidelity order would carry weights
    over to what they do not mean (PBE weights labelled SCAN): refuse, naming what changed.
    A third-party library upgraded in between (sevenn, mace, nequip) does not change what the
    weights mean: a warning names the versions."""
    saved, current = copy.deepcopy(saved), copy.deepcopy(current)
    saved_version, current_version = _library_version(saved), _library_version(current)
    if saved_version != current_version:
        unrecorded = "a library version it did not record"
        warnings.warn(f"{path} was written with {saved_version or unrecorded}; resuming with {current_version}")
    changed = _changes(saved, current)
    if changed:
        raise ValueError(f"{path} belongs to another run ({'; '.join(changed)}); "
                         "resume with the same data, split, fidelities and model, or train into a new directory")  # fmt: skip


def save_checkpoint(path: Path, state: dict) -> None:
    atomic_write(path, lambda tmp: torch.save(state, tmp))


def load_checkpoint(path: Path) -> dict:
    """Read a training checkpoint with weights_only=True (no code is unpickled)."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises several types for truncated or foreign files
        raise ValueError(f"{path}: training checkpoint is corrupt or unreadable ({type(error).__name__}: {error})") from None


def split_indices(n: int, fractions: Sequence[float], seed: int) -> list[np.ndarray]:
    """Shuffle range(n) with a seed and cut it into consecutive parts of the given fractions
    (the last part takes the remainder)."""
    order = np.random.default_rng(seed).permutation(n)
    cuts = np.cumsum([int(round(f * n)) for f in fractions[:-1]])
    return np.split(order, cuts)
