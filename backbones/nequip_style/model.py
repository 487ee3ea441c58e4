"""A NequIP-style backbone (after Batzner et al., Nat. Commun. 2022), written with e3nn.

Species -> scalar features; each interaction block convolves them with the spherical
harmonics of the edges (weights from a radial MLP), mixes the result linearly, adds a
species-dependent self-interaction and applies a gate (scalars: SiLU; l > 0: scaled by sigmoid
gates); blocks with equal input and output irreps are residual. The readout sees the 0e
channels only, so energies are invariant and forces equivariant under rotations and inversion.
There is no global state: with several fidelities, `wrap` injects the fidelity at
`injection_sites()`.
"""

from __future__ import annotations

import torch
from e3nn import o3
from e3nn.nn import Gate
from torch import nn
from torch.nn import functional as F

from ..e3nn_blocks import Convolution, E3nnBackbone, ScalarReadout, invariant_part, natural_irreps
from ..injection_sites import InjectionSite


class InteractionBlock(nn.Module):
    def __init__(
        self,
        irreps_in: o3.Irreps,
        irreps_out: o3.Irreps,
        irreps_sh: o3.Irreps,
        n_elements: int,
        n_basis: int,
        radial_hidden: int,
        avg_neighbors: float,
    ):
        super().__init__()
        scalars = o3.Irreps([(mul, ir) for mul, ir in irreps_out if ir.l == 0])
        gated = o3.Irreps([(mul, ir) for mul, ir in irreps_out if ir.l > 0])
        self.gate = Gate(
            scalars, [F.silu if ir.p == 1 else torch.tanh for _, ir in scalars],
            o3.Irreps(f"{gated.num_irreps}x0e"), [torch.sigmoid], gated,
        )  # fmt: skip
        self.linear_in = o3.Linear(irreps_in, irreps_in)
        self.conv = Convolution(irreps_in, irreps_sh, irreps_out, n_basis, radial_hidden, avg_neighbors)
        self.linear_out = o3.Linear(self.conv.irreps_out, self.gate.irreps_in)
        self.self_interaction = o3.FullyConnectedTensorProduct(irreps_in, o3.Irreps(f"{n_elements}x0e"), self.gate.irreps_in)
        self.irreps_out = self.gate.irreps_out
        self.residual = o3.Irreps(irreps_in) == self.irreps_out

    def forward(self, h, species_one_hot, sh, radial, edge_index) -> torch.Tensor:
        message = self.linear_out(self.conv(self.linear_in(h), sh, radial, edge_index))
        out = self.gate(message + self.self_interaction(h, species_one_hot))
        return out + h if self.residual else out


class NequIPStyle(E3nnBackbone):
    """Per-atom energies from a graph; hidden features are `channels` x (0e, 1o, ..., lmax)."""

    def __init__(
        self,
        n_elements: int,
        cutoff: float = 5.0,
        channels: int = 16,
        lmax: int = 1,
        n_layers: int = 2,
        n_basis: int = 8,
        radial_hidden: int = 16,
        readout_hidden: int = 16,
        avg_neighbors: float = 10.0,
    ):
        if lmax < 1:
            raise ValueError(f"lmax must be at least 1 for an equivariant model, got {lmax}")
        config = dict(
            n_elements=n_elements, cutoff=cutoff, channels=channels, lmax=lmax, n_layers=n_layers, n_basis=n_basis,
            radial_hidden=radial_hidden, readout_hidden=readout_hidden, avg_neighbors=avg_neighbors,
        )  # fmt: skip
        super().__init__(n_elements, cutoff, channels, lmax, n_basis, config)
        hidden, sh, irreps, blocks = natural_irreps(channels, lmax), self.edges.irreps_sh, self.irreps_embedding, []
        for _ in range(n_layers):
            blocks.append(InteractionBlock(irreps, hidden, sh, n_elements, n_basis, radial_hidden, avg_neighbors))
            irreps = blocks[-1].irreps_out
        self.blocks = nn.ModuleList(blocks)
        self.irreps = irreps
        self.readout = ScalarReadout(irreps, readout_hidden)

    def forward(self, graph, edge_vectors: torch.Tensor, state: torch.Tensor | None) -> torch.Tensor:
        return self.readout(self.equivariant_features(graph, edge_vectors, state))

    def node_features(self, graph, edge_vectors: torch.Tensor, state: torch.Tensor | None) -> torch.Tensor:
        """Invariant (0e) atom features after the last block, for DIRECT sampling."""
        return invariant_part(self.equivariant_features(graph, edge_vectors, state), self.irreps)

    def equivariant_features(self, graph, edge_vectors: torch.Tensor, state: torch.Tensor | None) -> torch.Tensor:
        """Atom features after the last block (N, irreps.dim)."""
        sh, radial, h, species = self.embed(graph, edge_vectors, state)
        for block in self.blocks:
            h = block(h, species, sh, radial, graph.edge_index)
        return h

    def injection_sites(self) -> dict:
        return {
            "embedding": [InjectionSite(self.embedding, self.irreps_embedding)],
            "messages": [InjectionSite(block, block.irreps_out) for block in self.blocks],
            "readout": [InjectionSite(self.readout, self.irreps, on_input=True)],
        }
