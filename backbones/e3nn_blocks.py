"""Pieces shared by the e3nn backbones (NequIPStyle, MACEStyle).

- `EdgeEmbedding`: Bessel radial basis times a smooth cutoff, and spherical harmonics of the
  edge direction (parity (-1)^l, so the models are equivariant under inversion too).
- `Convolution`: the equivariant message sum_j R(r_ij) Y(r_ij) (x) h_j, a channel-wise tensor
  product whose per-path weights an MLP makes from the radial basis.
- `ScalarReadout` and `invariant_part`: what can be read from equivariant features without
  breaking invariance, i.e. their 0e channels only.
"""

from __future__ import annotations

import math

import torch
from e3nn import o3
from e3nn.nn import FullyConnectedNet
from torch import nn
from torch.nn import functional as F

from .m3gnet.basis import polynomial_cutoff


def natural_irreps(channels: int, lmax: int) -> o3.Irreps:
    """channels x (0e + 1o + 2e + ...): the irreps that spherical harmonics carry."""
    return o3.Irreps([(channels, (degree, (-1) ** degree)) for degree in range(lmax + 1)])


def invariant_part(x: torch.Tensor, irreps: o3.Irreps) -> torch.Tensor:
    """The 0e channels of features x with the given irreps."""
    return torch.cat([x[:, s] for (_, ir), s in zip(irreps, irreps.slices()) if ir == o3.Irrep("0e")], dim=1)


class EdgeEmbedding(nn.Module):
    """Edge vectors -> (spherical harmonics up to lmax, radial basis). The basis is
    sqrt(2/rc) sin(n pi r / rc) / r, n = 1..n_basis, times a cutoff that is smooth to second
    order, so energies and forces stay continuous as neighbours cross the cutoff."""

    def __init__(self, lmax: int, n_basis: int, cutoff: float):
        super().__init__()
        self.cutoff = cutoff
        self.irreps_sh = o3.Irreps.spherical_harmonics(lmax)
        self.register_buffer("frequencies", torch.arange(1, n_basis + 1) * math.pi / cutoff)

    def forward(self, edge_vectors: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        sh = o3.spherical_harmonics(self.irreps_sh, edge_vectors, normalize=True, normalization="component")
        r = torch.linalg.norm(edge_vectors, dim=1)[:, None]
        bessel = math.sqrt(2 / self.cutoff) * torch.sin(self.frequencies * r) / r
        return sh, bessel * polynomial_cutoff(r, self.cutoff)


class Convolution(nn.Module):
    """A_i = (1 / avg_neighbors) sum_j R(r_ij) Y(r_ij) (x) h_j over the edges (i, j). Each
    channel of h_j is coupled to the harmonics on its own ("uvu"), into the irreps in `keep`;
    the radial MLP gives one weight per edge, channel and coupling path."""

    def __init__(
        self, irreps_in: o3.Irreps, irreps_sh: o3.Irreps, keep: o3.Irreps, n_basis: int, radial_hidden: int, avg_neighbors: float
    ):
        super().__init__()
        irreps_out, instructions = [], []
        for i, (mul, ir_in) in enumerate(irreps_in):
            for j, (_, ir_sh) in enumerate(irreps_sh):
                for ir_out in ir_in * ir_sh:
                    if ir_out in keep:
                        instructions.append((i, j, len(irreps_out), "uvu", True))
                        irreps_out.append((mul, ir_out))
        self.irreps_out = o3.Irreps(irreps_out)
        self.avg_neighbors = avg_neighbors
        self.tp = o3.TensorProduct(
            irreps_in, irreps_sh, self.irreps_out, instructions, shared_weights=False, internal_weights=False
        )
        self.radial = FullyConnectedNet([n_basis, radial_hidden, self.tp.weight_numel], torch.nn.functional.silu)

    def forward(self, h: torch.Tensor, sh: torch.Tensor, radial: torch.Tensor, edge_index: torch.Tensor) -> torch.Tensor:
        centre, neighbour = edge_index
        messages = self.tp(h[neighbour], sh, self.radial(radial))
        summed = torch.zeros(h.shape[0], messages.shape[1], dtype=messages.dtype, device=messages.device)
        return summed.index_add(0, centre, messages) / self.avg_neighbors


class ScalarReadout(nn.Module):
    """Per-atom energy from equivariant features: an e3nn Linear to scalars (only the 0e
    inputs can reach 0e outputs), then a one-hidden-layer MLP."""

    def __init__(self, irreps_in: o3.Irreps, hidden: int):
        super().__init__()
        self.linear = o3.Linear(irreps_in, o3.Irreps(f"{hidden}x0e"))
        self.mlp = nn.Sequential(nn.SiLU(), nn.Linear(hidden, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.mlp(self.linear(x)).squeeze(-1)


class E3nnBackbone(nn.Module):
    """What the e3nn backbones share: no global state (wrap() injects the fidelity instead),
    one readout head, the edge embedding, and elements embedded as `channels` x 0e."""

    def __init__(self, n_elements: int, cutoff: float, channels: int, lmax: int, n_basis: int, config: dict):
        super().__init__()
        self.config = config
        self.cutoff = cutoff
        self.state_dim = 0
        self.n_heads = 1
        self.n_elements = n_elements
        self.edges = EdgeEmbedding(lmax, n_basis, cutoff)
        self.embedding = nn.Embedding(n_elements, channels)
        self.irreps_embedding = o3.Irreps(f"{channels}x0e")

    def embed(self, graph, edge_vectors: torch.Tensor, state: torch.Tensor | None):
        """Edge harmonics and radial basis, embedded atoms, and the species one-hot that the
        self-interactions take."""
        if state is not None:
            name = type(self).__name__
            raise ValueError(f"{name} has no global state input (state_dim=0); wrap() injects the fidelity instead")
        sh, radial = self.edges(edge_vectors)
        h = self.embedding(graph.species)
        return sh, radial, h, F.one_hot(graph.species, self.n_elements).to(h.dtype)
