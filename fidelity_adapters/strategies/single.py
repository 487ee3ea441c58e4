"""single: the high-fidelity training structures alone, as if no cheaper data existed."""

from __future__ import annotations

from ..training import train
from .task import Fitted, Task


def fit_single(task: Task) -> Fitted:
    if not task.split.hifi_train:
        raise ValueError(f"no {task.hifi} training structures: the single-fidelity baseline needs some")
    potential = task.potential([task.hifi])
    train(potential, task.pick(task.split.hifi_train), task.pick(task.split.validation), task.config_for(task.hifi), task.out_dir)
    return Fitted(lambda structures: potential.predict(structures, task.hifi), {"single": potential})
