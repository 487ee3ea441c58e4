"""Ready-made potentials: the paper's M3GNet, or an e3nn backbone (MACE-style, NequIP-style),
for a list of fidelities in one call.

`seed` fixes the initial weights without touching torch's global generator, so a model's
start does not depend on what ran before it in the process (None: draw from the global
generator).
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch

from backbones import M3GNet, MACEStyle, NequIPStyle

from .potential import Potential, wrap


def _seeded(build: Callable[[], Potential], seed: int | None) -> Potential:
    with torch.random.fork_rng(devices=[]):
        if seed is not None:
            torch.manual_seed(seed)
        return build()


def m3gnet_potential(
    elements: Sequence[int | str], fidelities: Sequence[str], seed: int | None = 0, **backbone_options
) -> Potential:
    """M3GNet with the paper's settings. One fidelity gives the paper's single-fidelity model
    (no global state); two or more give the multi-fidelity model with a 16-d fidelity state."""
    state_dim = backbone_options.pop("state_dim", 16 if len(fidelities) > 1 else 0)

    def build():
        return wrap(M3GNet(n_elements=len(set(elements)), state_dim=state_dim, **backbone_options), fidelities, elements)

    return _seeded(build, seed)


def _e3nn_potential(backbone_class, elements, fidelities, seed, inject, inject_dim, backbone_options) -> Potential:
    def build():
        backbone = backbone_class(n_elements=len(set(elements)), **backbone_options)
        return wrap(backbone, fidelities, elements, inject=inject, inject_dim=inject_dim)

    return _seeded(build, seed)


def mace_style_potential(
    elements: Sequence[int | str],
    fidelities: Sequence[str],
    seed: int | None = 0,
    inject: Sequence[str] | None = None,
    inject_dim: int | None = None,
    **backbone_options,
) -> Potential:
    """MACE-style e3nn backbone; with several fidelities an `inject_dim` (default 16) fidelity
    vector enters its 0e channels at the places in `inject` ("embedding", "messages",
    "readout"; default messages). Both are errors for a single fidelity. Messages are divided
    by `avg_neighbors` (backbone option, default 10): give it from the training data,
    `neighbors.average_neighbors(train_structures, cutoff)`, as the comparison harness does."""
    return _e3nn_potential(MACEStyle, elements, fidelities, seed, inject, inject_dim, backbone_options)


def nequip_style_potential(
    elements: Sequence[int | str],
    fidelities: Sequence[str],
    seed: int | None = 0,
    inject: Sequence[str] | None = None,
    inject_dim: int | None = None,
    **backbone_options,
) -> Potential:
    """NequIP-style e3nn backbone; the fidelity enters as in mace_style_potential."""
    return _e3nn_potential(NequIPStyle, elements, fidelities, seed, inject, inject_dim, backbone_options)


RECIPES = {"M3GNet": m3gnet_potential, "MACEStyle": mace_style_potential, "NequIPStyle": nequip_style_potential}
