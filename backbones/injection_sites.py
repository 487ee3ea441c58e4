"""Where a fidelity vector can enter a backbone without a global state: a backbone's
`injection_sites()` names them with `InjectionSite`; fidelity_adapters/injection.py hooks them.
It lives here, below the library, so that backbones never import fidelity_adapters."""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn


@dataclass(frozen=True)
class InjectionSite:
    """Per-atom features (N, irreps.dim) passing through `module`: its output, or for a readout
    its input (`on_input`); `index` picks one element of a tuple output (or argument), `key` one
    entry of a dict (nequip's modules pass dicts; the hook returns a modified shallow copy).
    `irreps` is an e3nn Irreps or its string."""

    module: nn.Module
    irreps: object
    on_input: bool = False
    index: int | None = None
    key: str | None = None
