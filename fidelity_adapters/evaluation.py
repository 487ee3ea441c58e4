"""Errors of a potential against labelled structures of one fidelity."""

from __future__ import annotations

from typing import Sequence

import numpy as np

from .data import LabelledStructure, select


def errors(potential, structures: Sequence[LabelledStructure], fidelity: str, batch_size: int = 16) -> dict:
    """Energy MAE per atom (eV/atom) and force MAE (eV/A, over components) at `fidelity`,
    counting only the labels each structure has."""
    potential.fidelity_state.index(fidelity)
    chosen = select(structures, fidelity)
    if not chosen:
        raise ValueError(f"no structures of fidelity {fidelity!r} in the data (found {sorted({s.fidelity for s in structures})})")
    predictions = potential.predict(chosen, fidelity, batch_size=batch_size)
    e_err, f_err = [], []
    for s, p in zip(chosen, predictions):
        if s.has_energy:
            e_err.append(abs(p["energy"] - s.energy) / len(s))
        if s.forces is not None:
            mask = np.isfinite(s.forces)
            f_err.append(np.abs(p["forces"] - s.forces)[mask])
    return {
        "energy_mae_per_atom": float(np.mean(e_err)) if e_err else float("nan"),
        "force_mae": float(np.mean(np.concatenate(f_err))) if f_err else float("nan"),
        "n_structures": len(chosen),
    }
