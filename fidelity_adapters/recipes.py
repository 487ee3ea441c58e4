"""Ready-made potentials: the paper's M3GNet for a list of fidelities in one call."""

from __future__ import annotations

from typing import Sequence

import torch

from backbones import M3GNet

from .potential import Potential, wrap


def m3gnet_potential(
    elements: Sequence[int | str], fidelities: Sequence[str], seed: int | None = 0, **backbone_options
) -> Potential:
    """M3GNet with the paper's settings. One fidelity gives the paper's single-fidelity model
    (no global state); two or more give the multi-fidelity model with a 16-d fidelity state.

    `seed` fixes the initial weights without touching torch's global generator, so a model's
    start does not depend on what ran before it in the process (None: draw from the global
    generator)."""
    state_dim = backbone_options.pop("state_dim", 16 if len(fidelities) > 1 else 0)
    with torch.random.fork_rng(devices=[]):
        if seed is not None:
            torch.manual_seed(seed)
        backbone = M3GNet(n_elements=len(set(elements)), state_dim=state_dim, **backbone_options)
        potential = wrap(backbone, fidelities, elements)
    return potential
