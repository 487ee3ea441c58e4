"""A MACE-style backbone (after Batatia et al., NeurIPS 2022), written with e3nn.

Each layer forms equivariant messages A_i = sum_j R(r_ij) Y(r_ij) (x) h_j (channel-wise), then
raises the body order with channel-wise powers of A (A (x) A, (A (x) A) (x) A, up to
`correlation`), projects [A, A^2, ...] back to the hidden irreps with an e3nn Linear and adds a
species-dependent residual of the layer's input. Every layer's 0e channels feed a readout and
the per-atom energy is their sum. There is no global state: with several fidelities, `wrap`
injects the fidelity at `injection_sites()`.
"""

from __future__ import annotations

import torch
from e3nn import o3
from torch import nn

from ..e3nn_blocks import Convolution, E3nnBackbone, ScalarReadout, invariant_part, natural_irreps
from ..injection_sites import InjectionSite


def channelwise_product(irreps1: o3.Irreps, irreps2: o3.Irreps, keep: o3.Irreps, same: bool) -> o3.TensorProduct:
    """Channel u of the first input times channel u of the second ("uuu"), coupled into every
    irrep in `keep`, one learned weight per channel and path. For the square of one tensor
    (`same`) only l1 <= l2 is coupled, and for l1 == l2 only even l3: the other paths repeat
    these or vanish identically (x (x) x is symmetric under exchange)."""
    irreps_out, instructions = [], []
    for i, (mul, ir1) in enumerate(irreps1):
        for j, (_, ir2) in enumerate(irreps2):
            if same and j < i:
                continue
            for ir_out in ir1 * ir2:
                if ir_out in keep and not (same and i == j and ir_out.l % 2):
                    instructions.append((i, j, len(irreps_out), "uuu", True))
                    irreps_out.append((mul, ir_out))
    return o3.TensorProduct(irreps1, irreps2, o3.Irreps(irreps_out), instructions)


class SymmetricProduct(nn.Module):
    """B = Linear([A, A^2, ..., A^correlation]): A^nu couples nu neighbours of each atom, so
    a layer sees (correlation + 1)-body terms."""

    def __init__(self, irreps_a: o3.Irreps, irreps_out: o3.Irreps, correlation: int):
        super().__init__()
        if correlation < 1:
            raise ValueError(f"correlation must be at least 1, got {correlation}")
        self.powers = nn.ModuleList()
        irreps, collected = irreps_a, irreps_a
        for nu in range(2, correlation + 1):
            power = channelwise_product(irreps, irreps_a, irreps_out if nu == correlation else irreps_a, same=nu == 2)
            self.powers.append(power)
            irreps = power.irreps_out
            collected = collected + irreps
        self.linear = o3.Linear(collected, irreps_out)

    def forward(self, a: torch.Tensor) -> torch.Tensor:
        power, powers = a, [a]
        for product in self.powers:
            power = product(power, a)
            powers.append(power)
        return self.linear(torch.cat(powers, dim=1))


class MACELayer(nn.Module):
    def __init__(
        self,
        irreps_in: o3.Irreps,
        irreps_out: o3.Irreps,
        irreps_sh: o3.Irreps,
        irreps_a: o3.Irreps,
        n_elements: int,
        correlation: int,
        n_basis: int,
        radial_hidden: int,
        avg_neighbors: float,
    ):
        super().__init__()
        self.linear_in = o3.Linear(irreps_in, irreps_in)
        self.conv = Convolution(irreps_in, irreps_sh, irreps_a, n_basis, radial_hidden, avg_neighbors)
        self.linear_a = o3.Linear(self.conv.irreps_out, irreps_a)
        self.product = SymmetricProduct(irreps_a, irreps_out, correlation)
        self.residual = o3.FullyConnectedTensorProduct(irreps_in, o3.Irreps(f"{n_elements}x0e"), irreps_out)
        self.irreps_out = irreps_out

    def forward(self, h, species_one_hot, sh, radial, edge_index) -> torch.Tensor:
        a = self.linear_a(self.conv(self.linear_in(h), sh, radial, edge_index))
        return self.product(a) + self.residual(h, species_one_hot)


class MACEStyle(E3nnBackbone):
    """Per-atom energies from a graph. Messages carry `channels` x (0e, 1o, ..., lmax); the
    hidden features between layers `channels` x (0e, ..., hidden_lmax)."""

    def __init__(
        self,
        n_elements: int,
        cutoff: float = 5.0,
        channels: int = 16,
        lmax: int = 2,
        hidden_lmax: int = 1,
        correlation: int = 3,
        n_layers: int = 2,
        n_basis: int = 8,
        radial_hidden: int = 16,
        readout_hidden: int = 16,
        avg_neighbors: float = 10.0,
    ):
        if not 0 <= hidden_lmax <= lmax:
            raise ValueError(f"hidden_lmax must be between 0 and lmax={lmax}, got {hidden_lmax}")
        config = dict(
            n_elements=n_elements, cutoff=cutoff, channels=channels, lmax=lmax, hidden_lmax=hidden_lmax,
            correlation=correlation, n_layers=n_layers, n_basis=n_basis, radial_hidden=radial_hidden,
            readout_hidden=readout_hidden, avg_neighbors=avg_neighbors,
        )  # fmt: skip
        super().__init__(n_elements, cutoff, channels, lmax, n_basis, config)
        self.irreps = natural_irreps(channels, hidden_lmax)
        irreps_a, sh, irreps_in = natural_irreps(channels, lmax), self.edges.irreps_sh, self.irreps_embedding
        self.layers = nn.ModuleList()
        for _ in range(n_layers):
            options = dict(correlation=correlation, n_basis=n_basis, radial_hidden=radial_hidden, avg_neighbors=avg_neighbors)
            self.layers.append(MACELayer(irreps_in, self.irreps, sh, irreps_a, n_elements, **options))
            irreps_in = self.irreps
        self.readouts = nn.ModuleList(ScalarReadout(self.irreps, readout_hidden) for _ in range(n_layers))

    def forward(self, graph, edge_vectors: torch.Tensor, state: torch.Tensor | None) -> torch.Tensor:
        features = self.layer_features(graph, edge_vectors, state)
        return torch.stack([readout(h) for readout, h in zip(self.readouts, features)]).sum(0)

    def node_features(self, graph, edge_vectors: torch.Tensor, state: torch.Tensor | None) -> torch.Tensor:
        """Invariant (0e) atom features of every layer side by side, for DIRECT sampling."""
        return torch.cat([invariant_part(h, self.irreps) for h in self.layer_features(graph, edge_vectors, state)], dim=1)

    def layer_features(self, graph, edge_vectors: torch.Tensor, state: torch.Tensor | None) -> list[torch.Tensor]:
        """Equivariant atom features (N, irreps.dim) after each layer."""
        sh, radial, h, species = self.embed(graph, edge_vectors, state)
        features = []
        for layer in self.layers:
            h = layer(h, species, sh, radial, graph.edge_index)
            features.append(h)
        return features

    def injection_sites(self) -> dict:
        return {
            "embedding": [InjectionSite(self.embedding, self.irreps_embedding)],
            "messages": [InjectionSite(layer, layer.irreps_out) for layer in self.layers],
            "readout": [InjectionSite(readout, self.irreps, on_input=True) for readout in self.readouts],
        }
