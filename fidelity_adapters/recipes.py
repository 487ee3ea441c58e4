"""Ready-made potentials: the paper's M3GNet for a list of fidelities in one call."""

from __future__ import annotations

from typing import Sequence

from backbones import M3GNet

from .potential import Potential, wrap


def m3gnet_potential(elements: Sequence[int | str], fidelities: Sequence[str], **backbone_options) -> Potential:
    """M3GNet with the paper's settings. One fidelity gives the paper's single-fidelity model
    (no global state); two or more give the multi-fidelity model with a 16-d fidelity state."""
    state_dim = backbone_options.pop("state_dim", 16 if len(fidelities) > 1 else 0)
    backbone = M3GNet(n_elements=len(set(elements)), state_dim=state_dim, **backbone_options)
    return wrap(backbone, fidelities, elements)
