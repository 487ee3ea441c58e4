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

The layers updated are every torch nn.Linear, every e3nn o3.Linear and every e3nn tensor
product with weights of its own (one rank-r matrix per path, in the weight block's layout, so
equivariance is kept: any weights of an e3nn layer give an equivariant map) and the layers of
e3nn's FullyConnectedNet (the radial MLPs, which give the convolutions' tensor products their
weights).
"""

from __future__ import annotations

import math
from contextlib import contextmanager

import torch
from e3nn import o3
from e3nn.nn import FullyConnectedNet
from torch import nn
from torch.nn.utils import parametrize


class LowRankUpdate(nn.Module):
    """W + B A for a weight W of shape (rows, cols): A (rank, cols), B (rows, rank), B = 0 at first."""

    def __init__(self, rows: int, cols: int, rank: int, dtype: torch.dtype, device: torch.device):
        super().__init__()
        self.a = nn.Parameter(torch.empty(min(rank, rows, cols), cols, dtype=dtype, device=device))
        nn.init.kaiming_uniform_(self.a, a=math.sqrt(5))
        self.b = nn.Parameter(torch.zeros(rows, self.a.shape[0], dtype=dtype, device=device))

    def delta(self) -> torch.Tensor:
        return self.b @ self.a

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        return weight + self.delta()


class PathsLowRankUpdate(nn.Module):
    """W + (B A per path) for the flat weight of an e3nn o3.Linear or tensor product: one
    LowRankUpdate (rows, cols) per path, the paths in the layer's weight order."""

    def __init__(self, paths: list[tuple[int, int]], rank: int, dtype: torch.dtype, device: torch.device):
        super().__init__()
        self.paths = nn.ModuleList(LowRankUpdate(rows, cols, rank, dtype, device) for rows, cols in paths)

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        return weight + torch.cat([path.delta().reshape(-1) for path in self.paths])


UPDATES = (LowRankUpdate, PathsLowRankUpdate)


def _update_for(layer: nn.Module, rank: int) -> nn.Module:
    weight = layer.weight
    if isinstance(layer, (o3.Linear, o3.TensorProduct)):
        paths = [_as_matrix(shape) for shape in _weight_blocks(layer) if 0 not in shape]
        return PathsLowRankUpdate(paths, rank, weight.dtype, weight.device)
    return LowRankUpdate(*weight.shape, rank, weight.dtype, weight.device)


def _weight_blocks(layer: o3.Linear | o3.TensorProduct) -> list[tuple[int, ...]]:
    """The shapes of the paths' blocks in an e3nn layer's flat weight, in their order there
    (a Linear's biases live in another tensor)."""
    if isinstance(layer, o3.Linear):
        return [ins.path_shape for ins in layer.instructions if ins.i_in != -1]
    return [ins.path_shape for ins in layer.instructions if ins.has_weight]


def _as_matrix(shape: tuple[int, ...]) -> tuple[int, int]:
    """A path's block as the matrix its update is: (mul_in, mul_out) for a Linear, (mul_1 mul_2,
    mul_out) for a "uvw" product, (mul, 1) for one weight per channel ("uuu": no rank to cut)."""
    return (math.prod(shape[:-1]), shape[-1]) if len(shape) > 1 else (shape[0], 1)


class FidelityLowRank(nn.Module):
    """Fidelity `fidelity`'s (an index) own rank-`rank` update of every linear layer in `backbone`:
    each weight reads W + B A inside `with update.applied(): ...` and W elsewhere (a
    parametrization, so backbones that use a layer's weight directly, as M3GNet's edge MLPs
    do, see it too). Starts at zero (B = 0): the fidelity predicts what the frozen weights do
    until it trains."""

    def __init__(self, backbone: nn.Module, fidelity: int, rank: int):
        super().__init__()
        layers = _layers_to_update(backbone, rank)
        if has_low_rank_updates(backbone):
            raise ValueError("the backbone has shared low-rank updates (trainable='lowrank'); a fidelity's own cannot join them")
        self.fidelity, self.rank, self.on = fidelity, rank, False
        self.updates = nn.ModuleList()
        for layer in layers:
            update = _update_for(layer, rank)
            self.updates.append(update)
            parametrize.register_parametrization(layer, "weight", _WhileApplied(self, update))

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
    """Turn every weight with a fidelity's own update into a plain parameter holding the weight
    fidelity `fidelity` runs with (its own update included, if it has one): for a model that
    runs at that fidelity only (an export, on a deep copy). Undone by hand on each layer, not by
    torch's remove_parametrizations: that deletes the weight property from the parametrized
    class, which a deep copy shares with the original, and would break the original."""
    for update in updates:
        update.on = update.fidelity == fidelity
    try:
        for layer in list(module.modules()):
            if parametrize.is_parametrized(layer, "weight") and isinstance(layer.parametrizations["weight"][0], _WhileApplied):
                original = layer.parametrizations["weight"].original
                weight = nn.Parameter(layer.weight.detach().clone(), requires_grad=original.requires_grad)
                del layer.parametrizations
                layer.__class__ = type(layer).__bases__[0]  # the class the layer had before it was parametrized
                layer.weight = weight
    finally:
        for update in updates:
            update.on = False


def add_low_rank_updates(module: nn.Module, rank: int) -> int:
    """Freeze every parameter of `module` and give each linear layer's weight in it a trainable
    rank-`rank` update; returns the number of layers adapted (an error if there are none)."""
    layers = _layers_to_update(module, rank)
    if any(parametrize.is_parametrized(m) for m in layers):
        raise ValueError(f"{type(module).__name__} has low-rank updates already (shared, or a fidelity's own)")
    module.requires_grad_(False)
    for layer in layers:
        parametrize.register_parametrization(layer, "weight", _update_for(layer, rank))
    return len(layers)


def _layers_to_update(module: nn.Module, rank: int) -> list[nn.Module]:
    """The linear layers of `module` (see the module docstring), after checking the rank and
    that there are some."""
    if rank < 1:
        raise ValueError(f"the rank of a low-rank update must be >= 1, not {rank}")
    radial = {id(layer) for net in module.modules() if isinstance(net, FullyConnectedNet) for layer in net.children()}
    layers = [
        m for m in module.modules()
        if isinstance(m, nn.Linear) or (id(m) in radial and m.weight.dim() == 2)
        or (isinstance(m, (o3.Linear, o3.TensorProduct)) and _owns_weights(m))
    ]  # fmt: skip
    if not layers:
        raise ValueError(f"{type(module).__name__} has no linear layers for low-rank updates")
    return layers


def _owns_weights(layer: o3.Linear | o3.TensorProduct) -> bool:
    """Whether an e3nn layer holds its weights as one shared parameter (not given them in
    forward, as a convolution's tensor product is by its radial MLP)."""
    return isinstance(layer.weight, nn.Parameter) and layer.weight.dim() == 1 and layer.weight.numel() > 0


def _shared_updated(module: nn.Module):
    """(name, layer) of the layers with shared updates (add_low_rank_updates')."""
    for name, layer in module.named_modules():
        if parametrize.is_parametrized(layer) and isinstance(layer.parametrizations["weight"][0], UPDATES):
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
