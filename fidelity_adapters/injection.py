"""Fidelity injection for backbones without a global state: forward hooks put a learned
fidelity vector into the invariant features.

A backbone names its injection sites (`injection_sites()`: per place, the modules whose e3nn
features pass there). `FidelityInjector` hooks each site and modulates only the 0e channels
with a FiLM of the per-atom fidelity vector, x0 -> x0 (1 + gamma) + beta. Every other irrep,
0o included (adding beta would break its sign change), passes untouched, so the backbone
stays equivariant. `check_fidelity_reaches_output` guards against injection that changes
nothing: hooks on a module whose output never reaches the energy would otherwise pass silently.
"""

from __future__ import annotations

from contextlib import contextmanager
from functools import partial
from typing import Sequence

import numpy as np
import torch

# isort: off
import backbones  # noqa: F401  before e3nn: importing it lets e3nn 0.4.4 load under weights-only torch.load
from e3nn import o3
# isort: on
from torch import nn
from torch_geometric.data import Batch

from .data import LabelledStructure

PLACES = {
    "embedding": "after the species embedding",
    "messages": "after each interaction block",
    "readout": "on the readout's input",
}


class ScalarFiLM(nn.Module):
    """x0 -> x0 * (1 + gamma(s)) + beta(s) on the 0e channels of x, with gamma and beta from a
    small MLP of the fidelity vector s; the MLP's default initialisation makes both non-zero,
    so the fidelity matters from the first step."""

    def __init__(self, irreps: str | o3.Irreps, state_dim: int):
        super().__init__()
        irreps = o3.Irreps(irreps)
        columns = [torch.arange(s.start, s.stop) for (_, ir), s in zip(irreps, irreps.slices()) if ir == o3.Irrep("0e")]
        if not columns:
            raise ValueError(f"features {irreps} have no 0e channels for the fidelity to enter")
        self.register_buffer("scalar_columns", torch.cat(columns), persistent=False)
        n = len(self.scalar_columns)
        self.mlp = nn.Sequential(nn.Linear(state_dim, state_dim), nn.SiLU(), nn.Linear(state_dim, 2 * n))

    def forward(self, x: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        gamma, beta = self.mlp(s.to(x.dtype)).chunk(2, dim=-1)
        scalars = x.index_select(1, self.scalar_columns)
        return x.index_copy(1, self.scalar_columns, scalars * (1 + gamma) + beta)


class FidelityInjector(nn.Module):
    """One ScalarFiLM per injection site of the chosen places, applied by hooks on the
    backbone's modules. The per-atom fidelity vectors are set around each backbone call
    (`with injector.fidelity(node_state): ...`); a hook that fires outside is an error, so a
    backbone called without its fidelity cannot quietly predict at none."""

    def __init__(self, backbone: nn.Module, places: Sequence[str], dim: int):
        super().__init__()
        name = type(backbone).__name__
        places = list(dict.fromkeys(places))
        unknown = [p for p in places if p not in PLACES]
        if unknown:
            raise ValueError(f"unknown injection place(s) {unknown}; known places: {list(PLACES)}")
        if not places:
            raise ValueError(f"no injection place given; known places: {list(PLACES)}")
        if not hasattr(backbone, "injection_sites"):
            raise ValueError(f"{name} exposes no injection sites (no injection_sites() method)")
        sites = backbone.injection_sites()
        self.backbone_name, self.places, self.dim = name, places, dim
        self.films = nn.ModuleDict()
        self._node_state: torch.Tensor | None = None
        for place in places:
            if not sites.get(place):
                offered = [p for p, found in sites.items() if found]
                raise ValueError(f"{name} has no {place!r} injection site; it offers {offered}")
            self.films[place] = nn.ModuleList(ScalarFiLM(site.irreps, dim) for site in sites[place])
            for site, film in zip(sites[place], self.films[place]):
                # partials of a bound method (not closures): a deep copy of the potential then
                # hooks the copied injector, not this one
                if site.on_input:
                    site.module.register_forward_pre_hook(partial(self._on_input, film, site.index or 0, site.key))
                else:
                    site.module.register_forward_hook(partial(self._on_output, film, site.index, site.key))

    @contextmanager
    def fidelity(self, node_state: torch.Tensor):
        """Per-atom fidelity vectors (N, dim) for the backbone calls inside the block."""
        self._node_state = node_state
        try:
            yield
        finally:
            self._node_state = None

    def _modulate(self, film: ScalarFiLM, index: int | None, key: str | None, value):
        if self._node_state is None:
            raise RuntimeError(
                f"a fidelity injection hook of {self.backbone_name} fired with no fidelity set: call the "
                "backbone through its Potential (or inside injector.fidelity(...)); was it wrapped twice?"
            )
        if index is not None:
            items = list(value)
            items[index] = self._modulate(film, None, key, items[index])
            return tuple(items)
        if key is not None:
            return {**value, key: film(value[key], self._node_state)}
        return film(value, self._node_state)

    def _on_output(self, film, index, key, module, args, output):
        return self._modulate(film, index, key, output)

    def _on_input(self, film, index, key, module, args):
        return self._modulate(film, index, key, args)


def _probe(potential) -> LabelledStructure:
    """Four atoms (the model's first elements, repeated if fewer) on a helix, all within the
    cutoff, no PBC: fixed positions, so the check draws no random numbers."""
    k = np.arange(4)
    positions = np.stack([np.cos(2.1 * k), np.sin(2.1 * k), 0.7 * k], axis=1)
    span = max(np.linalg.norm(a - b) for a in positions for b in positions)
    positions *= 0.6 * potential.backbone.cutoff / span
    numbers = np.array([potential.elements[i % len(potential.elements)] for i in k])
    return LabelledStructure(numbers, positions, np.zeros((3, 3)), np.zeros(3, bool), potential.fidelities[0], label="probe")


@torch.enable_grad()
def check_fidelity_reaches_output(potential) -> None:
    """Raise RuntimeError unless the network energy of one structure differs between the first
    two fidelities and its gradient reaches the fidelity embedding. Uses torch.autograd.grad,
    so no .grad is left on any parameter."""
    injector, structure = potential.injector, _probe(potential)
    batch = Batch.from_data_list([potential.graph(structure, name) for name in potential.fidelities[:2]])
    energy = potential.network_energy(batch)
    where = f"{injector.backbone_name} with the fidelity injected at {injector.places}"
    if not (energy[0] - energy[1]).abs() > 1e-6 * (1 + energy.abs().max()):
        raise RuntimeError(f"{where}: the energy is the same at two fidelities, so the injection reaches no output")
    weight = potential.fidelity_state.embedding.weight
    (grad,) = torch.autograd.grad(energy.sum(), weight, allow_unused=True)
    if grad is None or not bool(grad[:2].abs().sum(1).gt(0).all()):
        raise RuntimeError(f"{where}: the energy's gradient does not reach the fidelity embedding")
