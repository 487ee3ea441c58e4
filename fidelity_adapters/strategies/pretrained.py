"""Strategies that start from a pretrained foundation model (issue 13) rather than from random
weights, on the same split as the others: the model is `task.pretrained`, read at its own level
`task.pretrained_base` (the level the target starts from).

- `zero-shot`: the foundation model at its own level, untrained; only a per-element energy
  offset is fitted on the high-fidelity training structures (codes differ in their energy zero);
- `ft-mfi`: the target added as a new fidelity beside the base one, starting equal to it, and
  fine-tuned with replay of the base level (finetune.py; `task.finetune` sets replay, trainable,
  rank, ...): self-distillation by default, or with replay "data" the split's low-fidelity
  training structures at the base level (PBE data beside a MatPES-PBE model);
- `ft-transfer`: plain fine-tuning at the target (all weights, no replay), with the epochs
  scaled so that it takes as many optimizer steps as `ft-mfi` with its replay;
- `ft-delta`: the frozen foundation model plus a from-scratch model of the difference.

Where the data's target has the name of one of the model's own levels (bundled "r2SCAN" data and
MatPES-r2SCAN), the target is fine-tuned as "<name> (data)": the user's code and the foundation
model's are not the same level of theory, and the base level must stay the model's own.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Sequence

from ..data import LabelledStructure
from ..finetune import FinetuneConfig, finetune
from ..potential import Potential
from ..pretrained import entry, load_pretrained
from ..training import TrainConfig, TrainResult, train
from .delta import DELTA, DeltaPotential
from .task import Fitted, Task


def _base(task: Task) -> str:
    if task.pretrained is None:
        raise ValueError("strategies that start from a foundation model need `pretrained` (a name in `fidelity-adapters pretrained`)")
    return entry(task.pretrained).level(task.pretrained_base, what="pretrained_base")


def _target_name(task: Task) -> str:
    return f"{task.hifi} (data)" if task.hifi in entry(task.pretrained).fidelities else task.hifi


def _relabelled(structures: Sequence[LabelledStructure], fidelity: str) -> list[LabelledStructure]:
    return [replace(s, fidelity=fidelity) for s in structures]


def _hifi_sets(task: Task, fidelity: str) -> tuple[list[LabelledStructure], list[LabelledStructure]]:
    return _relabelled(task.pick(task.split.hifi_train), fidelity), _relabelled(task.pick(task.split.validation), fidelity)


def foundation_with_offset(
    pretrained: str, base: str, train_structures: Sequence[LabelledStructure], device: str = "cpu"
) -> Potential:
    """The frozen foundation model `pretrained` at its level `base` on `device`, its references
    corrected by the per-element offset that removes its mean energy error on `train_structures`
    (labelled at another level of theory: the codes differ in their energy zero)."""
    potential = load_pretrained(pretrained).to(device)
    potential.fit_references(_relabelled(train_structures, base), refit_scale=False, around_network=True)
    return potential


def _foundation_with_offset(task: Task) -> tuple[Potential, str]:
    base = _base(task)
    return foundation_with_offset(task.pretrained, base, task.pick(task.split.hifi_train)), base


def fit_zero_shot(task: Task) -> Fitted:
    potential, base = _foundation_with_offset(task)
    note = f"{task.pretrained} at {base}, untrained; per-element energy offset fitted on the {task.hifi} training structures"
    return Fitted(lambda structures: potential.predict(structures, base), {"zero-shot": potential}, note, {"optimizer_steps": 0})


def _finetuned(task: Task, label: str, **overrides) -> Fitted:
    base, target = _base(task), _target_name(task)
    options = {**task.finetune, **overrides}
    config = FinetuneConfig(train=replace(task.config, progress=False), **options)
    if config.replay == "none":  # as many optimizer steps as ft-mfi's target + replay epochs
        mfi = FinetuneConfig(**task.finetune)
        epochs = round(task.config.max_epochs * (1 + (mfi.replay_ratio if mfi.replay != "none" else 0)))
        config = replace(config, train=replace(config.train, max_epochs=epochs))
    train_set, val_set = _hifi_sets(task, target)
    replay = []
    if config.replay == "data":  # the split's low-fidelity training structures at the model's own level
        replay = [s for s in task.pick(task.split.lofi_train) if s.fidelity == base]
        if not replay:
            raise ValueError(f"replay 'data' replays the split's {base} training structures, and the data have none "
                             f"at {base} (low fidelities {task.lofi}); use replay 'distill' or pretrained_base one of them")  # fmt: skip
    result = finetune(task.pretrained, target, train_set, val_set, config, base_fidelity=base, replay_structures=replay,
                      out_dir=task.out_dir)  # fmt: skip
    report = result.report
    details = {"optimizer_steps": report["optimizer_steps"], "replay": config.replay, "trainable": config.trainable}
    drift = report["after"].get("base_held_out")
    if drift is not None:
        details["base_drift_force_mae"] = drift["force_mae"]
    note = (
        f"{task.pretrained} from {base} to {target}: {label}; replay {config.replay} (ratio {config.replay_ratio}), "
        f"trainable {config.trainable}, up to {config.train.max_epochs} epochs"
    )
    return Fitted(lambda structures: result.potential.predict(structures, target), {label: result.potential}, note, details)


def fit_finetuned_mfi(task: Task) -> Fitted:
    overrides = {} if "replay" in task.finetune else {"replay": "distill"}
    return _finetuned(task, "new fidelity beside the base one", **overrides)


def fit_finetuned_transfer(task: Task) -> Fitted:
    return _finetuned(task, "plain fine-tuning", replay="none", trainable="all")  # whatever `finetune` sets for ft-mfi


def foundation_delta(
    foundation: Potential, base: str, delta: Potential, train_structures: Sequence[LabelledStructure],
    val_structures: Sequence[LabelledStructure], config: TrainConfig, out_dir=None,
) -> tuple[DeltaPotential, TrainResult]:
    """Train `delta` (a potential whose one fidelity is DELTA) on the differences between the
    labels and the frozen `foundation`'s predictions at `base`; returns the sum of the two and
    the delta's training result (steps, epoch times)."""

    def differences(structures: Sequence[LabelledStructure]) -> list[LabelledStructure]:
        predicted = foundation.predict(list(structures), base)
        return [
            replace(s, fidelity=DELTA, energy=s.energy - p["energy"], stress=None,
                    forces=None if s.forces is None else s.forces - p["forces"])
            for s, p in zip(structures, predicted)
        ]  # fmt: skip

    train_set, val_set = differences(train_structures), differences(val_structures)
    result = train(delta, train_set, val_set, replace(config, monitor=DELTA), out_dir)
    return DeltaPotential(foundation, base, delta), result


def fit_foundation_delta(task: Task) -> Fitted:
    foundation, base = _foundation_with_offset(task)
    combined, result = foundation_delta(
        foundation, base, task.potential([DELTA]), task.pick(task.split.hifi_train), task.pick(task.split.validation),
        task.config, task.out_dir,
    )  # fmt: skip
    note = (
        f"{task.pretrained} at {base} (frozen, offset fitted) + a from-scratch {task.backbone} of the difference "
        f"between the {task.hifi} labels and its prediction"
    )
    models = {"foundation": foundation, "delta": combined.delta}
    return Fitted(combined.predict, models, note, {"optimizer_steps": result.optimizer_steps})
