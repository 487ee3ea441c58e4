"""delta: a low-fidelity model plus a model of the difference (high minus low).

The Delta model learns E_hifi - E_lofi and F_hifi - F_lofi on the high-fidelity training
structures. The low-fidelity part of each difference is the structure's own low-fidelity
label where the same geometry (same `struct_id`) has one, and otherwise the low-fidelity
model's prediction; the note says how many of each. Prediction = lofi model + Delta model.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Sequence

import numpy as np

from ..data import LabelledStructure
from ..potential import INFERENCE_ATOMS, Potential
from ..training import train
from .lofi_model import lofi_model
from .task import Fitted, Task

DELTA = "delta"


class DeltaPotential:
    """Sum of a low-fidelity potential and a Delta potential, predicting the high fidelity."""

    def __init__(self, lofi: Potential, lofi_fidelity: str, delta: Potential):
        self.lofi, self.lofi_fidelity, self.delta = lofi, lofi_fidelity, delta

    def predict(self, structures: Sequence[LabelledStructure], batch_size: int = 16, stress: bool = False,
                max_atoms: int = INFERENCE_ATOMS) -> list[dict]:  # fmt: skip
        base = self.lofi.predict(structures, self.lofi_fidelity, batch_size, stress, max_atoms)
        correction = self.delta.predict(structures, DELTA, batch_size, stress, max_atoms)
        return [{key: b[key] + c[key] for key in b} for b, c in zip(base, correction)]


def difference_labels(task: Task, hifi: list[LabelledStructure], lofi: Potential) -> tuple[list[LabelledStructure], dict]:
    """Delta-labelled copies of `hifi`, and counts of where the low-fidelity labels came from."""
    name = task.base_fidelity
    lofi_labels = {str(s.info["struct_id"]): s for s in task.structures if s.fidelity == name and "struct_id" in s.info}
    partners = [lofi_labels.get(str(s.info.get("struct_id"))) for s in hifi]
    label_energy = [p is not None and p.has_energy for p in partners]
    label_forces = [p is not None and p.forces is not None and bool(np.isfinite(p.forces).all()) for p in partners]
    # The low-fidelity model is evaluated only where a paired label is missing.
    missing = [k for k, s in enumerate(hifi) if not label_energy[k] or (s.forces is not None and not label_forces[k])]
    predicted = dict(zip(missing, lofi.predict([hifi[k] for k in missing], name))) if missing else {}
    counts = {"energy_label": 0, "energy_model": 0, "forces_label": 0, "forces_model": 0}
    out = []
    for k, (s, partner) in enumerate(zip(hifi, partners)):
        if label_energy[k]:
            e_low, counts["energy_label"] = partner.energy, counts["energy_label"] + 1
        else:
            e_low, counts["energy_model"] = predicted[k]["energy"], counts["energy_model"] + 1
        forces = None
        if s.forces is not None:
            if label_forces[k]:
                f_low, counts["forces_label"] = partner.forces, counts["forces_label"] + 1
            else:
                f_low, counts["forces_model"] = predicted[k]["forces"], counts["forces_model"] + 1
            forces = s.forces - f_low
        out.append(replace(s, fidelity=DELTA, energy=s.energy - e_low, forces=forces, stress=None))
    return out, counts


def fit_delta(task: Task) -> Fitted:
    if not task.split.hifi_train:
        raise ValueError(f"no {task.hifi} training structures to learn the difference from")
    base = lofi_model(task)
    train_set, counts = difference_labels(task, task.pick(task.split.hifi_train), base)
    val_set, _ = difference_labels(task, task.pick(task.split.validation), base)
    delta = task.potential([DELTA])
    train(delta, train_set, val_set, task.config_for(DELTA), task.out_dir)
    combined = DeltaPotential(base, task.base_fidelity, delta)
    n = len(train_set)
    note = (
        f"{task.hifi} - {task.base_fidelity} differences: low-fidelity energies from labels for {counts['energy_label']}/{n} "
        f"training structures, from the {task.base_fidelity} model for {counts['energy_model']}/{n}"
    )
    if counts["forces_model"]:
        note += f"; forces from the model for {counts['forces_model']}/{n}"
    return Fitted(combined.predict, {"lofi": base, "delta": delta}, note)
