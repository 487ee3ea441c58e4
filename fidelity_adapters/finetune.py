"""Fine-tuning a pretrained potential at a new level of theory without forgetting its own.

    result = finetune("matgl:M3GNet-MatPES-PBE-v2025.1", target="SCAN", train_structures=scan_train,
                      val_structures=scan_val, config=FinetuneConfig(replay="distill"), out_dir="runs/ft")

The target fidelity is added beside the base one and starts equal to it (pretrained/). Each
fidelity's elemental references are then corrected around the network's predictions on the
training data of that fidelity (the user's labels come from their own code, whose energy
zero differs from the pretrained data's at the base level too; elements absent from the data
keep their references), and the model trains on the target structures together with
base-level "replay" structures:
- replay="data": base-level structures the user gives (a held-out part measures forgetting);
- replay="distill": the frozen pretrained model labels the target structures and rattled
  copies of them at the base level (self-distillation: the base level is held to what the
  pretrained model predicted; forgetting is then drift from it on held-out rattled copies);
- replay="none": target data only (forgetting is measured as for "distill": the base level
  stays in the model, and plain fine-tuning moves it too).
`replay_ratio` replay structures per target structure, `replay_weight` their loss weight.
`trainable` picks what trains: "all"; "adapter" (matgl's M3GNet: the fidelity state path and
the readout, the pretrained interaction weights as they are; SevenNet: "lowrank-target");
"lowrank" (every linear layer of the backbone frozen with a trainable rank-`rank` update,
low_rank.py, merged into the weights at the end; the fidelity embedding trains in full); or
"lowrank-target" (the target's own rank-`rank` update of every linear layer, used for its
structures only, Potential.add_low_rank_update; every pretrained weight frozen, so the base
level cannot drift at all and needs no replay).
The report gives target and base errors zero-shot, after the reference correction ("before"
training) and after training, and the optimizer steps taken, for comparisons at equal budgets.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from .data import LabelledStructure
from .devices import parse_device
from .evaluation import errors
from .low_rank import add_low_rank_updates, merge_in_place
from .potential import Potential
from .pretrained import entry, load_pretrained
from .serialization import atomic_write, save_potential
from .training import TrainConfig, split_indices, train

REPLAY_KINDS = ("data", "distill", "none")
TRAINABLE = ("all", "adapter", "lowrank", "lowrank-target")


@dataclass
class FinetuneConfig:
    train: TrainConfig = field(default_factory=lambda: TrainConfig(max_epochs=20, learning_rate=1e-4, batch_size=4))
    replay: str = "distill"
    replay_ratio: float = 1.0  # replay structures per target training structure
    replay_weight: float = 1.0  # loss weight of the replay structures (target: 1)
    rattle: float = 0.05  # A, displacement of the rattled copies that self-distillation labels
    held_out_fraction: float = 0.2  # of the replay structures, kept out of training to measure forgetting
    trainable: str = "all"
    rank: int = 8  # of the low-rank updates (trainable="lowrank" or "lowrank-target", or "adapter" on a SevenNet)
    radial: bool = False  # a SevenNet's target update reaches its radial networks too (sevenn_low_rank.py)
    self_connections: bool = True  # and its skip paths' self-connections (False: as measured before 2026-12-03)
    state_dim: int = 16
    device: str = "cpu"  # where the model trains: cpu, cuda or cuda:N (graphs are still built on the CPU)

    def check(self) -> None:
        parse_device(self.device, "device")
        if self.replay not in REPLAY_KINDS:
            raise ValueError(f"replay must be one of {REPLAY_KINDS}, not {self.replay!r}")
        if self.trainable not in TRAINABLE:
            raise ValueError(f"trainable must be one of {TRAINABLE}, not {self.trainable!r}")
        if not self.replay_ratio >= 0 or not self.replay_weight >= 0 or not self.rattle >= 0:
            raise ValueError("replay_ratio, replay_weight and rattle must be >= 0")
        if not 0 < self.held_out_fraction < 1:
            raise ValueError(f"held_out_fraction must be in (0, 1), not {self.held_out_fraction}")


@dataclass
class FinetuneResult:
    potential: Potential
    report: dict


def keeps_base_exactly(library: str | None, trainable: str) -> bool:
    """The target's own low-rank update (a SevenNet's adapter is one) acts on the target's
    structures only: the base level stays the pretrained model's exactly, and replay has
    nothing to do."""
    return trainable == "lowrank-target" or (library == "sevenn" and trainable == "adapter")


def distilled(model: Potential, structures: Sequence[LabelledStructure], fidelity: str, rattle: float, seed: int) -> list:
    """The structures, rattled by `rattle` A (Gaussian, per component), labelled by `model` at
    `fidelity`: energies and forces of the frozen pretrained model, as base-level replay."""
    rng = np.random.default_rng(seed)
    moved = [
        replace(s, positions=s.positions + rng.normal(scale=rattle, size=s.positions.shape), fidelity=fidelity,
                label=f"{s.label} (rattled, labelled by the pretrained model)", stress=None)
        for s in structures
    ]  # fmt: skip
    predictions = model.predict(moved, fidelity)
    return [replace(s, energy=p["energy"], forces=p["forces"]) for s, p in zip(moved, predictions)]


def freeze_to_adapter(potential: Potential, target: str, rank: int, radial: bool = False, self_connections: bool = True) -> None:
    """Only the adapter trains. A SevenNet gets a low-rank update of the target's own, and
    nothing else trains. A matgl M3GNet trains its fidelity state path and readout: the
    pretrained interaction weights are frozen, and in the first layers of the bond and atom
    update MLPs only the state columns receive gradients."""
    backbone = potential.backbone
    if hasattr(backbone, "fidelity_updates"):
        freeze_to_target_update(potential, target, rank, radial, self_connections)
        return
    if getattr(backbone, "state_dim", 0) == 0:
        raise ValueError("trainable='adapter' needs a backbone with a fidelity state path (a matgl M3GNet import) or a SevenNet")
    for p in backbone.parameters():
        p.requires_grad_(False)
    for module in [*backbone.readouts, *[b.state_update for b in backbone.blocks]]:
        for p in module.parameters():
            p.requires_grad_(True)
    state_dim = backbone.state_dim
    for block in backbone.blocks:
        for mlp in (block.edge_update, block.node_update):
            for first in (mlp.value[0], mlp.gate[0]):
                mask = torch.zeros_like(first.weight)
                mask[:, -state_dim:] = 1
                first.weight.requires_grad_(True)
                first.weight.register_hook(lambda grad, mask=mask: grad * mask)


def freeze_to_target_update(potential: Potential, target: str, rank: int, radial: bool = False, self_connections: bool = True) -> None:
    """Only the target's own low-rank update trains; every other parameter is frozen."""
    potential.requires_grad_(False)
    if hasattr(potential.backbone, "fidelity_updates"):  # a SevenNet: e3nn layers, masked per atom
        from .third_party.sevenn import add_low_rank_update

        add_low_rank_update(potential, target, rank, radial=radial, self_connections=self_connections).requires_grad_(True)
    else:
        potential.add_low_rank_update(target, rank).requires_grad_(True)


def _split(structures: list, fraction: float, seed: int) -> tuple[list, list]:
    held, kept = split_indices(len(structures), [fraction, 1 - fraction], seed)
    return [structures[k] for k in kept], [structures[k] for k in held]


def finetune(
    name: str,
    target: str,
    train_structures: Sequence[LabelledStructure],
    val_structures: Sequence[LabelledStructure],
    config: FinetuneConfig | None = None,
    base_fidelity: str | None = None,
    replay_structures: Sequence[LabelledStructure] = (),
    out_dir: str | Path | None = None,
) -> FinetuneResult:
    """Fine-tune pretrained model `name` at fidelity `target` (see the module docstring)."""
    config = config or FinetuneConfig()
    config.check()
    model = entry(name)
    base = model.level(base_fidelity, what="base fidelity")
    if keeps_base_exactly(model.library, config.trainable):
        if config.replay != "none":
            raise ValueError(f"replay={config.replay!r} would do nothing with trainable={config.trainable!r} on {name}: its update "
                             "acts on the target's structures only and the base level stays the pretrained model's exactly; use replay='none'")  # fmt: skip
        if target == base:
            raise ValueError(f"trainable={config.trainable!r} adds an update of the target's own beside an unchanged base level, so "
                             f"the target must differ from the base fidelity {base!r}; to fine-tune {base!r} itself use trainable='all' or 'lowrank'")  # fmt: skip
    sevenn_update = model.library == "sevenn" and keeps_base_exactly(model.library, config.trainable)
    for asked, what in ((config.radial, "radial=True extends a SevenNet's target update to its radial networks"),
                        (not config.self_connections, "self_connections=False keeps a SevenNet's target update off its skip paths")):
        if asked and not sevenn_update:
            raise ValueError(f"{what}: it needs a sevenn model and trainable 'adapter' or 'lowrank-target', "
                             f"not {name} with trainable={config.trainable!r}")  # fmt: skip
    for group, label in ((train_structures, "training"), (val_structures, "validation")):
        wrong = sorted({s.fidelity for s in group} - {target})
        if not group or wrong:
            raise ValueError(f"{label} structures must be non-empty and all at the target {target!r} (found {wrong})")
    if config.replay == "data":
        wrong = sorted({s.fidelity for s in replay_structures} - {base})
        if not replay_structures or wrong:
            raise ValueError(f"replay='data' needs base-level ({base!r}) replay structures (found {wrong or 'none'})")
    elif replay_structures:
        raise ValueError(f"replay structures were given but replay={config.replay!r}; use replay='data'")

    add = [] if target in model.fidelities else [target]
    potential = load_pretrained(name, add=add, like=base, state_dim=config.state_dim).to(config.device)
    seed = config.train.seed
    n_replay = int(round(config.replay_ratio * len(train_structures)))
    if config.replay == "data":
        replay_train, held_out = _split(list(replay_structures), config.held_out_fraction, seed)
        replay_train = replay_train[:n_replay] if n_replay else []
    else:  # without replay too, forgetting is measured on the held-out copies distillation would make
        pool = [train_structures[k % len(train_structures)] for k in range(n_replay + max(1, n_replay // 4))]
        replay = distilled(potential, pool, base, config.rattle, seed)  # still the pretrained model here
        replay_train, held_out = (replay[:n_replay] if config.replay == "distill" else []), replay[n_replay:]

    def measured() -> dict:
        out = {"target_val": errors(potential, val_structures, target)}
        return out | ({"base_held_out": errors(potential, held_out, base)} if held_out else {})

    zero_shot = measured()
    # user data from another code has another energy zero, at the base level too: refit both
    potential.fit_references([*train_structures, *replay_train], refit_scale=False, around_network=True)
    before = measured()
    if config.trainable == "adapter":
        freeze_to_adapter(potential, target, config.rank, config.radial, config.self_connections)
    elif config.trainable == "lowrank":
        add_low_rank_updates(potential.backbone, config.rank)
    elif config.trainable == "lowrank-target":
        freeze_to_target_update(potential, target, config.rank, config.radial, config.self_connections)

    weights = {base: config.replay_weight, target: 1.0} if base != target else None
    train_config = replace(config.train, monitor=target, fidelity_weights=weights)
    result = train(
        potential, [*train_structures, *replay_train], list(val_structures), train_config, out_dir=out_dir, fit_references=False
    )
    if config.trainable == "lowrank":
        merge_in_place(potential)
    report = {
        "pretrained": name, "base_fidelity": base, "target": target, "replay": config.replay,
        "settings": {k: v for k, v in asdict(config).items() if k != "train"} | {"train": asdict(train_config)},
        "n_target_train": len(train_structures), "n_replay_train": len(replay_train), "n_base_held_out": len(held_out),
        "optimizer_steps": result.optimizer_steps, "best_epoch": result.best_epoch,
        "training_seconds": result.training_seconds,
        "zero_shot": zero_shot, "before": before, "after": measured(),
    }  # fmt: skip
    if out_dir is not None:
        save_potential(potential, Path(out_dir) / "model.safetensors", extra={"finetuned_from": name})
        text = json.dumps(report, indent=1, default=float)
        atomic_write(Path(out_dir) / "finetune_report.json", lambda tmp: Path(tmp).write_text(text))
    return FinetuneResult(potential, report)
