"""FidelityState: named fidelities -> learned vectors, plus each fidelity's elemental
reference energies and the shared energy scale.

The names are the public face: every entry point takes a fidelity *name*, and a name the
model was not built with is an error that lists the ones it knows (no silent default).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from torch import nn


class UnknownFidelityError(KeyError):
    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])


class FidelityState(nn.Module):
    def __init__(self, fidelities: Sequence[str], n_elements: int, dim: int):
        super().__init__()
        fidelities = [str(f) for f in fidelities]
        if not fidelities:
            raise ValueError("at least one fidelity name is needed")
        if len(set(fidelities)) != len(fidelities):
            raise ValueError(f"fidelity names must be unique, got {fidelities}")
        self.fidelities = fidelities
        self.dim = dim
        self.embedding = nn.Embedding(len(fidelities), dim) if dim else None
        self.register_buffer("elemental_energies", torch.zeros(len(fidelities), n_elements, dtype=torch.float64))
        self.register_buffer("scale", torch.tensor(1.0, dtype=torch.float64))
        # projector per fidelity onto the compositions its references were fitted on
        # (references.ReferenceSums.spans); identity: references valid for every composition
        self.register_buffer("reference_span", torch.eye(n_elements, dtype=torch.float64).repeat(len(fidelities), 1, 1))

    def _apply(self, fn, recurse=True):
        """Keep the reference table in float64 whatever the network's dtype: totals are
        thousands of eV, and float32 would round them to about 1e-3 eV."""
        kept = {name: getattr(self, name) for name in ("elemental_energies", "scale", "reference_span")}
        super()._apply(fn, recurse)
        for name, value in kept.items():  # the float64 originals, on the device fn moved them to (never through float32)
            setattr(self, name, value.to(device=getattr(self, name).device, dtype=torch.float64))
        return self

    def index(self, name: str) -> int:
        try:
            return self.fidelities.index(str(name))
        except ValueError:
            raise UnknownFidelityError(f"unknown fidelity {name!r}; this model knows {self.fidelities}") from None

    def forward(self, fidelity_ids: torch.Tensor) -> torch.Tensor | None:
        """(B,) integer ids -> (B, dim) learned vectors, or None for a model without state."""
        return None if self.embedding is None else self.embedding(fidelity_ids)

    def reference_energy(self, species: torch.Tensor, atom_fidelity: torch.Tensor) -> torch.Tensor:
        """Per-atom reference energy of each atom's element at its structure's fidelity."""
        return self.elemental_energies[atom_fidelity, species]

    def set_references(self, elemental_energies: np.ndarray, scale: float, span: np.ndarray | None = None) -> None:
        """`span`: see reference_span; None keeps the current one."""
        self.elemental_energies.copy_(torch.as_tensor(elemental_energies, dtype=torch.float64))
        self.scale.fill_(float(scale))
        if span is not None:
            self.reference_span.copy_(torch.as_tensor(span, dtype=torch.float64))

    def outside_span(self, species: torch.Tensor, fidelity_id: int) -> bool:
        """Whether a structure's composition (species indices) lies outside the compositions
        the fidelity's references were fitted on."""
        counts = torch.bincount(species.cpu(), minlength=self.reference_span.shape[-1]).to(torch.float64)
        span = self.reference_span[fidelity_id].cpu()
        return bool((counts - span @ counts).norm() > 1e-6 * counts.norm())
