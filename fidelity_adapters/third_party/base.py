"""What the mace and nequip adapters share: elements and their order, the backbone attributes
our Potential reads, and the reference-energy hand-over."""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from ase.data import chemical_symbols
from torch import nn

from ..potential import _atomic_numbers


class ThirdPartyBackbone(nn.Module):
    """A third-party model as a backbone: `forward(graph, edge_vectors, state)` -> per-atom
    energies (N,) without the model's own per-element offsets (those are `reference_energies()`).

    Our graphs number species by sorted atomic number; `model_index[species]` is the model's own
    index of that element (its atomic_numbers / type_names order). The third-party model sees
    our edge vectors unchanged, so forces and stress come from our autograd through them."""

    state_dim = 0
    n_heads = 1
    library = "?"

    def __init__(self, model: nn.Module, model_elements: Sequence[int], elements: Sequence[int | str] | None, cutoff: float):
        super().__init__()
        self.model = model
        model_elements = [int(z) for z in model_elements]
        if len(set(model_elements)) != len(model_elements):
            raise ValueError(f"{type(model).__name__} has several types of one element {model_elements}: not supported")
        self.elements = _atomic_numbers(model_elements)
        if elements is not None and _atomic_numbers(elements) != self.elements:
            raise ValueError(
                f"{type(model).__name__} was built for elements {[chemical_symbols[z] for z in self.elements]}, "
                f"not {list(elements)}: a trained model's element set cannot be changed"
            )
        self.cutoff = float(cutoff)
        self.register_buffer("model_index", torch.tensor([model_elements.index(z) for z in self.elements]), persistent=False)
        self.config = {"n_elements": len(self.elements), "elements": self.elements, "library": self.library}

    @staticmethod
    def _no_state(state) -> None:
        if state is not None:
            raise ValueError("third-party backbones have no global state input (state_dim=0); wrap() injects the fidelity")

    def reference_energies(self) -> np.ndarray:
        """The model's own per-element energy offsets (eV) in our element order, float64."""
        raise NotImplementedError

    def extra_repr(self) -> str:
        return f"elements={[chemical_symbols[z] for z in self.elements]}, cutoff={self.cutoff}"
