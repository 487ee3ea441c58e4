"""Low-rank updates (LoRA, Hu et al. 2021) of a pretrained network's linear layers for
fine-tuning: each weight W is frozen and trains as W + B A with A (rank, in) and B (out, rank),
B zero-initialised, so the network starts exactly as pretrained and can move only in a
rank-r subspace per layer (far fewer trainable numbers than W: less forgetting, less memory).

The update is a torch parametrization of the layer's weight; `merge_in_place` writes W + B A
into plain weights at the end of training, and `merged_state_dict` is what a model saved
during training holds.
"""

from __future__ import annotations

import math

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


def add_low_rank_updates(module: nn.Module, rank: int) -> int:
    """Freeze every parameter of `module` and give each nn.Linear weight in it a trainable
    rank-`rank` update; returns the number of layers adapted (an error if there are none)."""
    if rank < 1:
        raise ValueError(f"the rank of a low-rank update must be >= 1, not {rank}")
    linears = [m for m in module.modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise ValueError(f"{type(module).__name__} has no nn.Linear layers for low-rank updates")
    module.requires_grad_(False)
    for linear in linears:
        update = LowRankUpdate(linear.out_features, linear.in_features, rank, linear.weight.dtype, linear.weight.device)
        parametrize.register_parametrization(linear, "weight", update)
    return len(linears)


def has_low_rank_updates(module: nn.Module) -> bool:
    return any(parametrize.is_parametrized(m) for m in module.modules())


def merge_in_place(module: nn.Module) -> nn.Module:
    """Write W + B A into plain weights and drop the updates; returns `module`. (Not on a deep
    copy: a copy shares torch's parametrized layer classes with the original, and removing
    the parametrization there would break the original.)"""
    for layer in module.modules():
        if parametrize.is_parametrized(layer):
            for name in list(layer.parametrizations):
                parametrize.remove_parametrizations(layer, name, leave_parametrized=True)
    return module


def merged_state_dict(module: nn.Module) -> dict[str, torch.Tensor]:
    """`module`'s state dict as a model without updates has it: W + B A under each weight's
    own name, the updates left out; the module itself is not changed."""
    state = {k: v for k, v in module.state_dict().items() if ".parametrizations." not in k}
    for name, layer in module.named_modules():
        if parametrize.is_parametrized(layer):
            for tensor in layer.parametrizations:
                state[f"{name}.{tensor}" if name else tensor] = getattr(layer, tensor).detach()
    return dict(sorted(state.items()))
