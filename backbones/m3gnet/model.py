"""M3GNet (Chen & Ong 2022) as a backbone: graph (+ optional global state) -> atomic energies.

Defaults are the settings of Ko & Ong 2025: bond cutoff 5 A, three-body cutoff 4 A, widths
64/64 and state 16, 3 smooth Bessel functions for bonds, max_n = max_l = 3 for the three-body
basis, 3 blocks with two-layer gated update MLPs, gated 64-64-1 readout per atom.

Three options exist for matgl's pretrained weights (fidelity_adapters/pretrained), which were
trained with other conventions: `messages_to="neighbour"` sums each bond's atom message into
its neighbour atom (matgl's DGL graphs sum into the bond's destination) instead of its centre;
`three_body_basis="smooth"` expands r_ik in smooth Bessel functions instead of j_l; and
`three_body_basis_cutoff` scales that basis (matgl: the bond cutoff, not the three-body one).
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from .basis import SmoothBesselBasis, SphericalBesselHarmonics, polynomial_cutoff
from .layers import GatedMLP, M3GNetBlock, ThreeBodyInteraction
from .triplets import triplets_in_torch, triplets_of_graph


class M3GNet(nn.Module):
    """Per-atom energies from a graph. `state_dim` > 0 gives the model a global state input
    (the fidelity vector, when wrapped); 0 gives the paper's single-fidelity model."""

    def __init__(
        self,
        n_elements: int,
        cutoff: float = 5.0,
        three_body_cutoff: float = 4.0,
        node_dim: int = 64,
        edge_dim: int = 64,
        state_dim: int = 16,
        n_radial: int = 3,
        max_n: int = 3,
        max_l: int = 3,
        n_blocks: int = 3,
        hidden: Sequence[int] = (64,),
        readout_hidden: Sequence[int] = (64, 64),
        n_heads: int = 1,
        messages_to: str = "centre",
        three_body_basis: str = "bessel",
        three_body_basis_cutoff: float | None = None,
    ):
        super().__init__()
        self.config = dict(
            n_elements=n_elements, cutoff=cutoff, three_body_cutoff=three_body_cutoff, node_dim=node_dim,
            edge_dim=edge_dim, state_dim=state_dim, n_radial=n_radial, max_n=max_n, max_l=max_l,
            n_blocks=n_blocks, hidden=list(hidden), readout_hidden=list(readout_hidden), n_heads=n_heads,
            messages_to=messages_to, three_body_basis=three_body_basis, three_body_basis_cutoff=three_body_basis_cutoff,
        )  # fmt: skip
        if messages_to not in ("centre", "neighbour"):
            raise ValueError(f"messages_to must be 'centre' or 'neighbour', not {messages_to!r}")
        if three_body_basis not in ("bessel", "smooth"):
            raise ValueError(f"three_body_basis must be 'bessel' or 'smooth', not {three_body_basis!r}")
        self.cutoff = cutoff
        self.three_body_cutoff = three_body_cutoff
        self.state_dim = state_dim
        self.n_heads = n_heads
        self.radial_basis = SmoothBesselBasis(n_radial, cutoff)
        basis_cutoff = three_body_cutoff if three_body_basis_cutoff is None else three_body_basis_cutoff
        self.three_body_basis = SphericalBesselHarmonics(max_n, max_l, basis_cutoff, smooth=three_body_basis == "smooth")
        self.atom_embedding = nn.Embedding(n_elements, node_dim)
        self.bond_embedding = nn.Sequential(nn.Linear(n_radial, edge_dim), nn.SiLU())
        self.three_body = nn.ModuleList(ThreeBodyInteraction(node_dim, edge_dim, max_n * max_l) for _ in range(n_blocks))
        self.blocks = nn.ModuleList(
            M3GNetBlock(node_dim, edge_dim, state_dim, n_radial, hidden, messages_to) for _ in range(n_blocks)
        )
        self.readouts = nn.ModuleList(GatedMLP([node_dim, *readout_hidden, 1], activate_last=False) for _ in range(n_heads))

    def augment_graph(self, graph) -> None:
        """Add the triplet indices this backbone needs (numba, at graph-building time)."""
        graph.triplet_edge_ids = torch.as_tensor(triplets_of_graph(graph, self.three_body_cutoff))

    def augment_graph_in_torch(self, graph, edge_vectors: torch.Tensor) -> None:
        """The same triplets from tensor operations, inside a traced (exported) model."""
        lengths = torch.linalg.norm(edge_vectors, dim=1)
        graph.triplet_edge_ids = triplets_in_torch(graph.edge_index[0], lengths, self.three_body_cutoff, graph.species.shape[0])

    def forward(self, graph, edge_vectors: torch.Tensor, state: torch.Tensor | None) -> torch.Tensor:
        nodes = self.node_features(graph, edge_vectors, state)
        if self.n_heads == 1:
            return self.readouts[0](nodes).squeeze(-1)
        # One readout per fidelity (the multi-head baseline): each atom uses its structure's head.
        node_graph = graph.batch if graph.batch is not None else torch.zeros_like(graph.species)
        head = graph.fidelity[node_graph]
        energies = torch.zeros(len(nodes), dtype=nodes.dtype, device=nodes.device)
        for k, readout in enumerate(self.readouts):
            chosen = (head == k).nonzero().squeeze(1)
            if len(chosen):
                energies = energies.index_put((chosen,), readout(nodes[chosen]).squeeze(-1))
        return energies

    def node_features(self, graph, edge_vectors: torch.Tensor, state: torch.Tensor | None) -> torch.Tensor:
        """Atom features after the last block (N, node_dim): what the readout sees, and what
        DIRECT sampling uses to describe structures."""
        if (state is None) != (self.state_dim == 0):
            raise ValueError(f"this M3GNet has state_dim={self.state_dim}; state given: {state is not None}")
        edge_index = graph.edge_index
        node_graph = graph.batch if graph.batch is not None else torch.zeros_like(graph.species)
        n_graphs = int(graph.num_graphs) if hasattr(graph, "num_graphs") else 1
        edge_graph = node_graph[edge_index[0]]
        lengths = torch.linalg.norm(edge_vectors, dim=1)
        radial = self.radial_basis(lengths)

        ij, ik = graph.triplet_edge_ids
        cos_theta = (edge_vectors.index_select(0, ij) * edge_vectors.index_select(0, ik)).sum(1)
        cos_theta = cos_theta / (lengths.index_select(0, ij) * lengths.index_select(0, ik))
        three_body_radial = self.three_body_basis.radial(lengths).index_select(0, ik)
        three_body_basis = self.three_body_basis.with_angles(three_body_radial, cos_theta.clamp(-1.0, 1.0))
        three_body_cutoff = polynomial_cutoff(lengths, self.three_body_cutoff)
        triplet_cutoff = three_body_cutoff.index_select(0, ij) * three_body_cutoff.index_select(0, ik)
        weighted_basis = three_body_basis * triplet_cutoff[:, None]

        nodes = self.atom_embedding(graph.species)
        edges = self.bond_embedding(radial)
        for three_body, block in zip(self.three_body, self.blocks):
            edges = three_body(nodes, edges, edge_index[1], graph.triplet_edge_ids, weighted_basis)
            nodes, edges, state = block(nodes, edges, state, edge_index, edge_graph, node_graph, radial, n_graphs)
        return nodes
