"""Third-party e3nn models as backbones: mace-torch's MACE / ScaleShiftMACE and nequip's
NequIP models, used unchanged (no fork of their code), with the fidelity injected by forward
hooks (FidelityInjector, a FiLM on 0e channels) at the places they offer.

    from fidelity_adapters.third_party import wrap_third_party, MaceBackbone
    potential = wrap_third_party(mace_model, fidelities=["PBE", "SCAN"])        # detects mace / nequip
    potential = wrap(MaceBackbone(mace_model), ["PBE", "SCAN"], ["H", "O"])     # the same, explicitly

mace-torch (e3nn 0.4.4) and nequip (e3nn >= 0.6) cannot share an environment; importing this
package imports neither. save_potential writes a wrapped mace model, or a nequip model built
by build_nequip, as its library, version, class or builder and constructor config (JSON).
See docs/third_party.md for versions and limits.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
from torch import nn

from ..potential import Potential, library_of, wrap

__all__ = [
    "MaceBackbone", "NequipBackbone", "SevennBackbone", "adapt", "build_nequip", "load_sevenn", "nequip_global_state", "wrap_third_party",
]  # fmt: skip


def __getattr__(name):  # lazy: `import fidelity_adapters.third_party` must not need mace or nequip
    if name == "MaceBackbone":
        from .mace import MaceBackbone

        return MaceBackbone
    if name in ("NequipBackbone", "build_nequip", "nequip_global_state"):
        from . import nequip

        return getattr(nequip, name)
    if name in ("SevennBackbone", "load_sevenn"):
        from . import sevenn

        return getattr(sevenn, name)
    raise AttributeError(name)


def adapt(model: nn.Module, elements: Sequence[int | str] | None = None, **options) -> nn.Module:
    """The backbone adapter for a mace-torch or nequip model (an adapter is returned as is)."""
    from .base import ThirdPartyBackbone

    if isinstance(model, ThirdPartyBackbone):
        return model
    library = library_of(model)
    if library == "mace":
        from .mace import MaceBackbone

        return MaceBackbone(model, elements, **options)
    if library == "nequip":
        from .nequip import NequipBackbone

        return NequipBackbone(model, elements, **options)
    if library == "sevenn":
        from .sevenn import SevennBackbone

        return SevennBackbone(model, elements, **options)
    raise TypeError(
        f"{type(model).__module__}.{type(model).__name__} is not a mace-torch, nequip or sevenn model; "
        "wrap a backbone of this library with fidelity_adapters.wrap"
    )


def wrap_third_party(
    model: nn.Module,
    fidelities: Sequence[str],
    elements: Sequence[int | str] | None = None,
    inject: Sequence[str] | None = None,
    inject_dim: int | None = None,
    **options,
) -> Potential:
    """wrap() for a mace-torch / nequip model: adapt it, wrap it, and start every fidelity's
    elemental reference energies at the model's own (mace E0s, nequip per-type shifts), which
    the adapter removes from its per-atom energies. Before training, the wrapped model at any
    fidelity then gives the model's own energy (plus the fidelity's FiLM, if injected);
    training refits the references per fidelity as for any backbone. `options` go to the
    adapter (mace: head=...)."""
    backbone = adapt(model, elements, **options)
    potential = wrap(backbone, fidelities, backbone.elements, inject=inject, inject_dim=inject_dim)
    # one row for all fidelities, or (sevenn's modality-wise shifts) one row per fidelity
    table = np.broadcast_to(np.atleast_2d(backbone.reference_energies()), (len(potential.fidelities), len(backbone.elements)))
    potential.fidelity_state.set_references(table.copy(), float(potential.fidelity_state.scale))
    return potential


def rebuild_backbone(saved: dict, dtype, path) -> nn.Module:
    """The adapter over a model built from `saved` (ThirdPartyBackbone.saved_config), with
    fresh weights; the saved ones are loaded into it afterwards."""
    from .base import require_library

    require_library(saved["library"], saved["version"], path)
    if saved["library"] == "mace":
        from .mace import rebuild_mace as rebuild
    else:
        from .nequip import rebuild_nequip as rebuild
    return rebuild(saved, dtype, path)
