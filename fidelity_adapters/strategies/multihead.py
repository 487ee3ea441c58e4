"""multihead: one shared trunk, one readout head and one set of reference energies per
fidelity (the MACE/SevenNet style of multi-fidelity training), no fidelity state vector."""

from __future__ import annotations

from ..training import train
from .task import Fitted, Task


def fit_multihead(task: Task) -> Fitted:
    fidelities = [*task.lofi, task.hifi]
    potential = task.potential(fidelities, state_dim=0, n_heads=len(fidelities))
    train_set = task.pick(task.split.lofi_train) + task.pick(task.split.hifi_train)
    train(potential, train_set, task.pick(task.split.validation), task.config_for(task.hifi), task.out_dir)
    return Fitted(lambda structures: potential.predict(structures, task.hifi), {"multihead": potential})
