"""A fidelity of its own inside a pretrained SevenNet, at a fraction of its parameters: every
e3nn linear layer (the self-interactions, the readout and, with `self_connections`, the skip
paths' self-connections) gets, for the atoms of that fidelity only, a trainable low-rank update
(LoRA, Hu et al. 2021) plus a bias on its 0e outputs.

    add_fidelity(potential, "SCAN", like="r2SCAN")      # a copied modality (sevenn.py)
    add_low_rank_update(potential, "SCAN", rank=8)      # SCAN atoms: W + B A in every layer
    add_low_rank_update(potential, "SCAN", radial=True) # and SCAN edges: in every radial network

The skip paths (SelfConnectionLinearIntro: an e3nn Linear of a block's input, added to its
output) hold a sixth of SevenNet-MF-0's weights; updating them too brought the SCAN liquid
water test forces from 62.2 to 60.7 meV/A (3 splits; docs/results/pretrained).

With `radial`, the last layer of each convolution's radial network (the MLP that turns an
edge's length into its tensor-product weights) gets a rank-`rank` update too, on the edges of
that fidelity's atoms: the e3nn linears cannot change how strongly a pair interacts at a given
distance, which is where the levels of theory differ most (repulsion, hydrogen bonds).

Why: a modality copied from the base one moves only through its one-hot columns (a bias per
layer), and fine-tuning the shared weights with replay trades the target's accuracy against
the base level's drift (docs/results/pretrained). The update instead starts at zero (B = 0,
bias 0: the new fidelity predicts what the base does) and is never applied to other
fidelities' atoms: with the pretrained weights frozen, every other fidelity keeps the
pretrained model's predictions exactly, and no replay is needed to keep them.

Equivariance: e3nn's Linear mixes channels only within a path (an irrep to the same irrep),
and the update is one rank-r matrix per path, fed to a weightless copy of the layer's paths
(the modality one-hot inputs left out: they stay the model's own). Biases sit on 0e outputs.
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from functools import partial

import torch
from e3nn import o3
from torch import nn


class PathLowRank(nn.Module):
    """A rank-`rank` update B A of each path of an e3nn Linear from `irreps_in` (the layer's
    own inputs without its modality one-hots) to its outputs, plus 0e biases; starts at zero."""

    def __init__(self, irreps_in: o3.Irreps, irreps_out: o3.Irreps, rank: int):
        super().__init__()
        self.delta = o3.Linear(irreps_in, irreps_out, internal_weights=False, shared_weights=True, biases=True)
        self.a, self.b = nn.ParameterList(), nn.ParameterList()
        for ins in self.delta.instructions:
            if ins.i_in == -1:  # a bias: its own parameter below
                continue
            mul_in, mul_out = ins.path_shape
            r = min(rank, mul_in, mul_out)
            a = torch.empty(mul_in, r)
            nn.init.kaiming_uniform_(a, a=math.sqrt(5))
            self.a.append(nn.Parameter(a))
            self.b.append(nn.Parameter(torch.zeros(r, mul_out)))
        self.bias = nn.Parameter(torch.zeros(self.delta.bias_numel))
        self.n_features = irreps_in.dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight = torch.cat([(a @ b).reshape(-1) for a, b in zip(self.a, self.b)])
        return self.delta(x[..., : self.n_features], weight, self.bias)


class RadialLowRank(nn.Module):
    """A rank-`rank` update B A of the last layer of an e3nn FullyConnectedNet (a linear map
    without activation, normalised as e3nn normalises it); starts at zero."""

    def __init__(self, layer: nn.Module, rank: int):
        super().__init__()
        if layer.act is not None:
            raise ValueError("a radial update needs a radial network whose last layer has no activation")
        h_in, h_out = layer.weight.shape
        r = min(rank, h_in, h_out)
        self.a = nn.Parameter(torch.empty(h_in, r))
        nn.init.kaiming_uniform_(self.a, a=math.sqrt(5))
        self.b = nn.Parameter(torch.zeros(r, h_out))
        self.norm = (layer.h_in * layer.var_in / layer.var_out) ** -0.5

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x @ self.a) @ self.b * self.norm


class FidelityLowRank(nn.Module):
    """The updates of one fidelity (our index `fidelity`), added by forward hooks to the
    outputs of the model's e3nn linear layers on that fidelity's atoms (and with `radial` to
    its radial networks' outputs on its atoms' edges). The fidelities are set around each model
    call (`with update.atoms(atom_index, edge_index): ...`); a hook that fires outside is an
    error, so the model cannot run with the update silently applied to no one."""

    def __init__(self, model: nn.Module, fidelity: int, rank: int, radial: bool = False, self_connections: bool = True):
        from sevenn.nn.convolution import IrrepsConvolution
        from sevenn.nn.linear import IrrepsLinear
        from sevenn.nn.self_connection import SelfConnectionLinearIntro

        super().__init__()
        if rank < 1:
            raise ValueError(f"the rank of a low-rank update must be >= 1, not {rank}")
        self.fidelity, self.rank = fidelity, rank
        self._atom_fidelity: torch.Tensor | None = None
        self._edge_fidelity: torch.Tensor | None = None
        # each hooked e3nn Linear with its own inputs: a modal layer's one-hots (its last input
        # irreps) stay the model's; a skip path's linear has no modality inputs
        linears = [
            (m.linear, m.linear.irreps_in[:-1] if m.num_modalities > 1 else m.linear.irreps_in)
            for m in model
            if isinstance(m, IrrepsLinear)
        ]
        if self_connections:
            skips = [m.linear for m in model if isinstance(m, SelfConnectionLinearIntro)]
            if not skips:
                raise ValueError("self_connections=True needs a sevenn model with SelfConnectionLinearIntro layers")
            linears += [(linear, linear.irreps_in) for linear in skips]
        self.updates = nn.ModuleList()
        for linear, irreps_in in linears:
            update = PathLowRank(irreps_in, linear.irreps_out, rank).to(device=linear.weight.device, dtype=linear.weight.dtype)
            self.updates.append(update)
            # a partial of a bound method, not a closure: a deep copy of the model hooks the copy
            linear.register_forward_hook(partial(self._add, update))
        self.radial_updates = nn.ModuleList()
        convolutions = [m for m in model if isinstance(m, IrrepsConvolution)] if radial else []
        if radial and not convolutions:
            raise ValueError("radial=True needs a sevenn model with IrrepsConvolution layers")
        for convolution in convolutions:
            last = list(convolution.weight_nn)[-1]
            update = RadialLowRank(last, rank).to(device=last.weight.device, dtype=last.weight.dtype)
            self.radial_updates.append(update)
            last.register_forward_hook(partial(self._add_on_edges, update))

    @contextmanager
    def atoms(self, atom_fidelity: torch.Tensor, edge_fidelity: torch.Tensor | None):
        """Each atom's fidelity index (N,) and each edge's (E,: its centre atom's; needed by
        radial updates only) for the model calls inside the block."""
        self._atom_fidelity, self._edge_fidelity = atom_fidelity, edge_fidelity
        try:
            yield
        finally:
            self._atom_fidelity = self._edge_fidelity = None

    def _add(self, update: PathLowRank, module, args, output):
        return output + self._mask(self._atom_fidelity, output) * update(args[0])

    def _add_on_edges(self, update: RadialLowRank, module, args, output):
        return output + self._mask(self._edge_fidelity, output) * update(args[0])

    def _mask(self, fidelity: torch.Tensor | None, output: torch.Tensor) -> torch.Tensor:
        if fidelity is None:
            raise RuntimeError("a SevenNet low-rank update fired with no atom fidelities set: call the model through its Potential")
        return (fidelity == self.fidelity).unsqueeze(-1).to(output.dtype)
