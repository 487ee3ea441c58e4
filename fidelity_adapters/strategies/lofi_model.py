"""The low-fidelity-only model that transfer learning starts from and Delta-learning adds to.

It depends on the split's low-fidelity sets only, not on the high-fidelity fraction, so one
seed trains it once (in `task.lofi_model_dir`) and every later call resumes the finished run.
"""

from __future__ import annotations

from ..potential import Potential
from ..training import train
from .task import Task


def lofi_model(task: Task) -> Potential:
    name = task.base_fidelity
    train_set = [s for s in task.pick(task.split.lofi_train) if s.fidelity == name]
    val_set = [s for s in task.pick(task.split.lofi_validation) if s.fidelity == name]
    if not train_set or not val_set:
        raise ValueError(
            f"a {name}-only model needs {name} training and validation structures; the split has "
            f"{len(train_set)} and {len(val_set)}"
        )
    potential = task.potential([name])
    train(potential, train_set, val_set, task.config_for(name), task.lofi_model_dir / name.replace("/", "_"))
    return potential
