"""mfi (Ko & Ong): one model on every fidelity, the fidelity entering as a learned state vector."""

from __future__ import annotations

from ..training import train
from .task import Fitted, Task


def fit_multifidelity(task: Task) -> Fitted:
    potential = task.potential([*task.lofi, task.hifi])
    train_set = task.pick(task.split.lofi_train) + task.pick(task.split.hifi_train)
    train(potential, train_set, task.pick(task.split.validation), task.config_for(task.hifi), task.out_dir)
    return Fitted(lambda structures: potential.predict(structures, task.hifi), {"mfi": potential})
