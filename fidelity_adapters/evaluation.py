"""Errors of predictions against labelled structures of one fidelity."""

from __future__ import annotations

from typing import Sequence

import numpy as np

from .data import LabelledStructure, select
from .potential import INFERENCE_ATOMS


def parity_arrays(structures: Sequence[LabelledStructure], predictions: Sequence[dict]) -> dict[str, np.ndarray]:
    """True and predicted energies per atom and force components, over the labels that exist."""
    e_true, e_pred, f_true, f_pred = [], [], [], []
    for s, p in zip(structures, predictions, strict=True):
        if s.has_energy:
            e_true.append(s.energy / len(s))
            e_pred.append(p["energy"] / len(s))
        if s.forces is not None:
            mask = np.isfinite(s.forces)
            f_true.append(s.forces[mask])
            f_pred.append(np.asarray(p["forces"])[mask])
    join = lambda parts: np.concatenate(parts) if parts else np.empty(0)  # noqa: E731
    return {
        "energy_true_per_atom": np.array(e_true), "energy_pred_per_atom": np.array(e_pred),
        "force_true": join(f_true), "force_pred": join(f_pred),
    }  # fmt: skip


def error_metrics(parity: dict[str, np.ndarray], n_structures: int) -> dict:
    """MAEs, and the energy bias (mean of predicted minus true per atom): an energy MAE that is
    mostly bias is an offset, typically a reference-energy error, not scatter."""
    mae = lambda a, b: float(np.mean(np.abs(a - b))) if len(a) else float("nan")  # noqa: E731
    return {
        "energy_mae_per_atom": mae(parity["energy_true_per_atom"], parity["energy_pred_per_atom"]),
        "force_mae": mae(parity["force_true"], parity["force_pred"]),
        "energy_bias_per_atom": energy_bias(parity),
        "n_structures": n_structures,
    }


def energy_bias(parity) -> float:
    """Mean signed energy error per atom, predicted minus true (NaN without energy labels)."""
    error = np.asarray(parity["energy_pred_per_atom"]) - np.asarray(parity["energy_true_per_atom"])
    return float(error.mean()) if error.size else float("nan")


def errors(potential, structures: Sequence[LabelledStructure], fidelity: str, batch_size: int = 16, max_atoms: int = INFERENCE_ATOMS) -> dict:
    """Energy MAE and bias per atom (eV/atom) and force MAE (eV/A, over components) at
    `fidelity`, counting only the labels each structure has."""
    potential.fidelity_state.index(fidelity)
    chosen = select(structures, fidelity)
    if not chosen:
        raise ValueError(f"no structures of fidelity {fidelity!r} in the data (found {sorted({s.fidelity for s in structures})})")
    predictions = potential.predict(chosen, fidelity, batch_size=batch_size, max_atoms=max_atoms)
    return error_metrics(parity_arrays(chosen, predictions), len(chosen))
