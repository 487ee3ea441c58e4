"""Low-rank updates (LoRA, Hu et al. 2021) of a pretrained network's linear layers for
fine-tuning: each weight W is frozen and trains as W + B A with A (rank, in) and B (out, rank),
B zero-initialised, so the network starts exactly as pretrained and can move only in a
rank-r subspace per layer (far fewer trainable numbers than W: less forgetting, less memory).

The update is a torch parametrization of the layer's weight; `merge_in_place` writes W + B A
into plain weights at the end of training, and `merged_state_dict` is what a model saved
during training holds.

`FidelityLowRank` is the same update owned by one fidelity: in the weights only while that
fidelity's structures run (Potential.run_backbone runs a batch one fidelity at a time when it
has such updates), so every other fidelity keeps the frozen weights' predictions exactly: a
new level of theory learnt without the base level moving at all.
"""

from __future__ import annotations

import math
from contextlib import contextmanager

import torch
from torch import nn
from torch.nn.utils import parametrize


class LowRankUpdate(nn.Module):
    def __init__(self, out_features: int, in_features: int, rank: int, dtype: torch.dtype, device: torch.device):
        super().__init__()
        self.a = nn.Parameter(torch.empty(rank, in_features, dtype=dtype, device=device))
        nn.init.kaiming_uniform_(self.a, a=math.sqrt(5))
        self.b = nn.Parameter(torch.zeros(out_features, rank, dtype=dtype, device=device))

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        return weight + self.b @ self.a


class FidelityLowRank(nn.Module):
    """Fidelity `fidelity`'s (an index) own rank-`rank` update of every nn.Linear in `backbone`:
    each weight reads W + B A inside `with update.applied(): ...` and W elsewhere (a
    parametrization, so backbones that use a layer's weight directly, as M3GNet's edge MLPs
    do, see it too). Starts at zero (B = 0): the fidelity predicts what the frozen weights do
    until it trains."""

    def __init__(self, backbone: nn.Module, fidelity: int, rank: int):
        super().__init__()
        linears = _linears_to_update(backbone, rank)
        if has_low_rank_updates(backbone):
            raise ValueError("the backbone has shared low-rank updates (trainable='lowrank'); a fidelity's own cannot join them")
        self.fidelity, self.rank, self.on = fidelity, rank, False
        self.updates = nn.ModuleList()
        for linear in linears:
            update = LowRankUpdate(linear.out_features, linear.in_features, rank, linear.weight.dtype, linear.weight.device)
            self.updates.append(update)
            parametrize.register_parametrization(linear, "weight", _WhileApplied(self, update))

    @contextmanager
    def applied(self):
        self.on = True
        try:
            yield
        finally:
            self.on = False


class _WhileApplied(nn.Module):
    """W + B A while its owner is applied, else W. Holds owner and update outside its
    submodules: their parameters are the owner's, saved once, under the potential."""

    def __init__(self, owner: FidelityLowRank, update: LowRankUpdate):
        super().__init__()
        self.refs = (owner, update)

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        owner, update = self.refs
        return update(weight) if owner.on else weight


def weights_of_one_fidelity(module: nn.Module, updates: list[FidelityLowRank], fidelity: int) -> None:
    """Replace every layer with a fidelity's own update by a plain nn.Linear holding the
    weights fidelity `fidelity` runs with (its own update included, if it has one): for a
    model that runs at that fidelity only (an export). New layers, not removed
    parametrizations: a deep copy shares its parametrized classes with the original, and
    removing one there would break the original."""
    for update in updates:
        update.on = update.fidelity == fidelity
    try:
        for parent in list(module.modules()):
            for name, layer in list(parent.named_children()):
                if parametrize.is_parametrized(layer) and isinstance(layer.parametrizations["weight"][0], _WhileApplied):
                    original = layer.parametrizations["weight"].original
                    plain = nn.Linear(layer.in_features, layer.out_features, layer.bias is not None, original.device, original.dtype)
                    with torch.no_grad():
                        plain.weight.copy_(layer.weight)
                        if layer.bias is not None:
                            plain.bias.copy_(layer.bias)
                    setattr(parent, name, plain.requires_grad_(original.requires_grad))
    finally:
        for update in updates:
            update.on = False


def add_low_rank_updates(module: nn.Module, rank: int) -> int:
    """Freeze every parameter of `module` and give each nn.Linear weight in it a trainable
    rank-`rank` update; returns the number of layers adapted (an error if there are none)."""
    linears = _linears_to_update(module, rank)
    if any(parametrize.is_parametrized(m) for m in linears):
        raise ValueError(f"{type(module).__name__} has low-rank updates already (shared, or a fidelity's own)")
    module.requires_grad_(False)
    for linear in linears:
        update = LowRankUpdate(linear.out_features, linear.in_features, rank, linear.weight.dtype, linear.weight.device)
        parametrize.register_parametrization(linear, "weight", update)
    return len(linears)


def _linears_to_update(module: nn.Module, rank: int) -> list[nn.Linear]:
    """The nn.Linear layers of `module`, after checking the rank and that there are some."""
    if rank < 1:
        raise ValueError(f"the rank of a low-rank update must be >= 1, not {rank}")
    linears = [m for m in module.modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise ValueError(f"{type(module).__name__} has no nn.Linear layers for low-rank updates")
    return linears


def _shared_updated(module: nn.Module):
    """(name, layer) of the layers with shared updates (add_low_rank_updates')."""
    for name, layer in module.named_modules():
        if parametrize.is_parametrized(layer) and isinstance(layer.parametrizations["weight"][0], LowRankUpdate):
            yield name, layer


def has_low_rank_updates(module: nn.Module) -> bool:
    """Whether `module` has shared updates (add_low_rank_updates'; not a fidelity's own)."""
    return any(True for _ in _shared_updated(module))


def merge_in_place(module: nn.Module) -> nn.Module:
    """Write W + B A into plain weights and drop the updates; returns `module`. (Not on a deep
    copy: a copy shares torch's parametrized layer classes with the original, and removing
    the parametrization there would break the original.)"""
    for _, layer in list(_shared_updated(module)):
        parametrize.remove_parametrizations(layer, "weight", leave_parametrized=True)
    return module


def merged_state_dict(module: nn.Module) -> dict[str, torch.Tensor]:
    """`module`'s state dict as a model without updates has it: W + B A under each weight's
    own name, the updates left out; the module itself is not changed."""
    layers = {f"{name}." if name else "": layer for name, layer in _shared_updated(module)}
    hidden = tuple(f"{prefix}parametrizations." for prefix in layers)
    state = {k: v for k, v in module.state_dict().items() if not k.startswith(hidden)}
    for prefix, layer in layers.items():
        state[f"{prefix}weight"] = layer.weight.detach()
    return dict(sorted(state.items()))
