"""Pretrained potentials loaded by name, as our Potential at named fidelities.

    from fidelity_adapters.pretrained import available, load_pretrained
    potential = load_pretrained("matgl:M3GNet-MatPES-PBE-v2025.1")                 # fidelity "PBE"
    potential = load_pretrained("matgl:M3GNet-MatPES-PBE-v2025.1", add=["SCAN"])   # SCAN starts as PBE

`available()` says, for every name, whether its weights are on this machine and where, or why
not. matgl's files are read from the folder in $FIDELITY_ADAPTERS_PRETRAINED or from
shared/pretrained beside the project checkout (never copied into the project); SevenNet's
checkpoints ship in the sevenn wheel (extra [sevenn]).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch

from ..potential import Potential

PRETRAINED_ENV = "FIDELITY_ADAPTERS_PRETRAINED"


@dataclass(frozen=True)
class Pretrained:
    name: str
    fidelities: tuple[str, ...]  # the levels of theory the weights were trained at, ours named
    description: str
    licence: str

    @property
    def library(self) -> str:
        return self.name.split(":", 1)[0]

    def level(self, requested: str | None = None, what: str = "level") -> str:
        """One of the model's own levels by name (default: its first); another name is an error
        naming `what` was asked for."""
        level = requested or self.fidelities[0]
        if level not in self.fidelities:
            raise ValueError(f"{what} {level!r} is not one of {self.name}'s own fidelities {list(self.fidelities)}")
        return level

    def locate(self) -> tuple[Path | None, str]:
        """(where the weights are, None if absent; a line saying where or why not)."""
        if self.library == "matgl":
            folder = self.name.split(":", 1)[1] + "-PES"
            for root in pretrained_roots():
                if (root / "matgl" / folder / "state.pt").is_file():
                    return root / "matgl" / folder, str(root / "matgl" / folder)
            return None, f"no matgl/{folder} under {[str(r) for r in pretrained_roots()] or 'any pretrained folder'}"
        try:
            import sevenn
        except ImportError:
            return None, "sevenn is not installed (pip install 'fidelity-adapters[sevenn]')"
        return Path(sevenn.__file__).parent, f"sevenn {getattr(sevenn, '__version__', '?')} wheel"


REGISTRY = {
    entry.name: entry
    for entry in (
        Pretrained("matgl:M3GNet-MatPES-PBE-v2025.1", ("PBE",), "M3GNet, MatPES v2025.1 PBE, 89 elements", "BSD-3-Clause"),
        Pretrained("matgl:M3GNet-MatPES-r2SCAN-v2025.1", ("r2SCAN",), "M3GNet, MatPES v2025.1 r2SCAN, 89 elements", "BSD-3-Clause"),
        Pretrained("sevenn:7net-0", ("PBE",), "SevenNet-0, MPtrj PBE", "MIT"),
        Pretrained("sevenn:7net-l3i5", ("PBE",), "SevenNet-l3i5, MPtrj PBE", "MIT"),
        Pretrained("sevenn:7net-mf-0", ("r2SCAN", "PBE"), "SevenNet-MF-0, modalities R2SCAN and PBE", "MIT"),
    )
}


def pretrained_roots() -> list[Path]:
    """Folders searched for pretrained files: $FIDELITY_ADAPTERS_PRETRAINED, then
    shared/pretrained beside the checkout this package runs from."""
    roots = [Path(os.environ[PRETRAINED_ENV])] if os.environ.get(PRETRAINED_ENV) else []
    beside = Path(__file__).resolve().parents[2].parent / "shared" / "pretrained"
    return [r for r in [*roots, beside] if r.is_dir()]


def entry(name: str) -> Pretrained:
    if name not in REGISTRY:
        raise ValueError(f"unknown pretrained model {name!r}; known: {sorted(REGISTRY)}")
    return REGISTRY[name]


def available() -> list[tuple[Pretrained, Path | None, str]]:
    """Every registered model with its location (None where absent) and a line saying why."""
    return [(e, *e.locate()) for e in REGISTRY.values()]


def load_pretrained(
    name: str, add: Sequence[str] = (), like: str | None = None, state_dim: int = 16, dtype: torch.dtype = torch.float32
) -> Potential:
    """The named model as a Potential at its own fidelities (named as in `available()`), plus
    the fidelities in `add`, each starting equal to own fidelity `like` (default: the first): for
    matgl's M3GNet through a zero-initialised global-state path of `state_dim`, for
    SevenNet-MF-0 as a copied modality (third_party/sevenn.py)."""
    model = entry(name)
    where, why = model.locate()
    if where is None:
        raise FileNotFoundError(f"{name}: {why}")
    like = model.level(like, what="the level a new fidelity starts as,")
    clash = [f for f in add if f in model.fidelities]
    if clash or len(set(add)) != len(add):
        raise ValueError(f"fidelities to add must be new and distinct; {name} already has {list(model.fidelities)}, got {list(add)}")
    if model.library == "matgl":
        from .matgl_m3gnet import load_matgl_m3gnet

        return load_matgl_m3gnet(where, [*model.fidelities, *add], state_dim=state_dim, dtype=dtype)
    from ..third_party.sevenn import add_fidelity, load_sevenn

    if add and len(model.fidelities) == 1:
        raise ValueError(f"{name} has no modalities to copy; add fidelities to sevenn:7net-mf-0, or wrap with a FiLM")
    potential = load_sevenn(name.split(":", 1)[1], list(model.fidelities))
    for fidelity in add:
        add_fidelity(potential, fidelity, like=like)
    return potential.to(dtype)
