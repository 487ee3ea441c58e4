"""What the mace and nequip adapters share: elements and their order, the backbone attributes
our Potential reads, the reference-energy hand-over, and saving: a model is saved as its
library, the library's version, the model's class or builder and its constructor config in
plain JSON (`saved_config`), and rebuilt from that with the installed library
(`rebuild_backbone`); serialization.py stores the weights beside it."""

from __future__ import annotations

import importlib
import warnings
from importlib.metadata import version
from typing import Sequence

import numpy as np
import torch
from ase.data import chemical_symbols
from torch import nn

from ..potential import _atomic_numbers

DISTRIBUTIONS = {"mace": "mace-torch", "nequip": "nequip", "sevenn": "sevenn"}  # import name -> pip name (= our extra's name)


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
        self.options: dict = {}  # the adapter's own arguments (mace: head), saved to rebuild it

    @staticmethod
    def _no_state(state) -> None:
        if state is not None:
            raise ValueError("third-party backbones have no global state input (state_dim=0); wrap() injects the fidelity")

    def reference_energies(self) -> np.ndarray:
        """The model's own per-element energy offsets (eV) in our element order, float64."""
        raise NotImplementedError

    def model_config(self) -> tuple[str, dict]:
        """(the model's class or builder name, its constructor arguments in plain JSON)."""
        raise ValueError(f"{type(self).__name__} cannot be saved by its constructor config")

    def saved_config(self) -> dict:
        """What save_potential writes as the backbone's config; `rebuild_backbone` reads it."""
        model, config = self.model_config()
        return {"library": self.library, "version": installed_version(self.library), "model": model, "config": config,
                "options": self.options}  # fmt: skip

    def extra_repr(self) -> str:
        return f"elements={[chemical_symbols[z] for z in self.elements]}, cutoff={self.cutoff}"


def installed_version(library: str) -> str:
    return version(DISTRIBUTIONS[library])


def require_library(library: str, saved_version: str | None, path) -> None:
    """The library a saved model needs, importable, else an ImportError saying how to install
    it; a version other than the saved one is a warning: the model is rebuilt with the
    installed one, and load_potential checks that the weights fit it."""
    try:
        importlib.import_module(library)
    except ImportError as error:
        raise ImportError(f"{path} is a {DISTRIBUTIONS[library]} model, and {DISTRIBUTIONS[library]} cannot be imported "
                          f"({error}): pip install 'fidelity-adapters[{library}]' (docs/third_party.md)") from None  # fmt: skip
    installed = installed_version(library)
    if saved_version is not None and saved_version != installed:
        warnings.warn(f"{path} was saved with {DISTRIBUTIONS[library]} {saved_version}, and {installed} is installed: "
                      "the model is rebuilt with the installed version")  # fmt: skip
