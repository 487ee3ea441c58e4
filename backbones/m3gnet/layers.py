"""M3GNet building blocks: gated MLP, three-body interaction, and the bond/atom/state block."""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn
from torch_geometric.utils import scatter


def mlp(dims: Sequence[int], activate_last: bool, bias: bool = True) -> nn.Sequential:
    """Linear layers with SiLU between them (and after the last one if activate_last)."""
    layers: list[nn.Module] = []
    for k, (a, b) in enumerate(zip(dims[:-1], dims[1:])):
        layers.append(nn.Linear(a, b, bias=bias))
        if k < len(dims) - 2 or activate_last:
            layers.append(nn.SiLU())
    return nn.Sequential(*layers)


class GatedMLP(nn.Module):
    """value(x) * sigmoid(gate(x)): two MLPs of the same shape, one gating the other."""

    def __init__(self, dims: Sequence[int], activate_last: bool = True, bias: bool = True):
        super().__init__()
        self.value = mlp(dims, activate_last=activate_last, bias=bias)
        self.gate = mlp(dims, activate_last=False, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.value(x) * torch.sigmoid(self.gate(x))

    def first_layer(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Weight (2h, inputs) and bias of the value and gate first layers, stacked."""
        value, gate = self.value[0], self.gate[0]
        bias = torch.cat([value.bias, gate.bias]) if value.bias is not None else None
        return torch.cat([value.weight, gate.weight]), bias

    def after_first_layer(self, first: torch.Tensor) -> torch.Tensor:
        """forward() given the stacked first-layer outputs (..., 2h), for callers that build
        that layer from pieces. With a hidden layer both halves start with a SiLU: applied
        once to the stacked tensor (one pass over contiguous memory, not two strided ones)."""
        value, gate = self.value[1:], self.gate[1:]
        if len(gate) and isinstance(gate[0], nn.SiLU) and isinstance(value[0], nn.SiLU):
            first, value, gate = nn.functional.silu(first), value[1:], gate[1:]
        value_in, gate_in = first.split(self.value[0].out_features, dim=-1)
        return value(value_in) * torch.sigmoid(gate(gate_in))


class ThreeBodyInteraction(nn.Module):
    """Adds to each bond ij the sum over k of basis(r_ik, theta_jik), gated by atom k. The
    basis comes already weighted by the smooth cutoffs of r_ij and r_ik (the same in every
    block, so weighted once: one product and its saved inputs fewer per block)."""

    def __init__(self, node_dim: int, edge_dim: int, basis_dim: int):
        super().__init__()
        self.atom_gate = nn.Sequential(nn.Linear(node_dim, basis_dim), nn.Sigmoid())
        self.bond_update = GatedMLP([basis_dim, edge_dim], bias=False)

    def forward(self, nodes, edges, neighbour, triplets, weighted_basis):
        ij, ik = triplets
        gated = weighted_basis * self.atom_gate(nodes).index_select(0, neighbour.index_select(0, ik))
        summed = scatter(gated, ij, dim=0, dim_size=edges.shape[0], reduce="sum")
        return edges + self.bond_update(summed)


class M3GNetBlock(nn.Module):
    """Bond update, then atom update, then (if the model has one) global state update. Each
    bond's atom message goes to its centre atom, or with `messages_to="neighbour"` to its
    neighbour atom (both directions of a bond are edges, so either sums over all neighbours,
    but the bond features differ: the three-body sum of bond ij runs over the k around i)."""

    def __init__(
        self, node_dim: int, edge_dim: int, state_dim: int, radial_dim: int, hidden: Sequence[int], messages_to: str = "centre"
    ):
        super().__init__()
        self.receiver = 0 if messages_to == "centre" else 1
        inputs = 2 * node_dim + edge_dim + state_dim
        self.edge_update = GatedMLP([inputs, *hidden, edge_dim])
        self.edge_radial = nn.Linear(radial_dim, edge_dim, bias=False)
        self.node_update = GatedMLP([inputs, *hidden, node_dim])
        self.node_radial = nn.Linear(radial_dim, node_dim, bias=False)
        self.state_update = mlp([node_dim + state_dim, *hidden, state_dim], activate_last=True) if state_dim else None

    def forward(self, nodes, edges, state, edge_index, edge_graph, node_graph, radial, n_graphs):
        edges = edges + edge_mlp(self.edge_update, nodes, edges, state, edge_index, edge_graph) * self.edge_radial(radial)
        messages = edge_mlp(self.node_update, nodes, edges, state, edge_index, edge_graph) * self.node_radial(radial)
        nodes = nodes + scatter(messages, edge_index[self.receiver], dim=0, dim_size=nodes.shape[0], reduce="sum")
        if self.state_update is not None:
            mean_nodes = scatter(nodes, node_graph, dim=0, dim_size=n_graphs, reduce="mean")
            state = self.state_update(torch.cat([mean_nodes, state], dim=1))
        return nodes, edges, state


def edge_mlp(mlp: GatedMLP, nodes, edges, state, edge_index, edge_graph) -> torch.Tensor:
    """mlp(cat[h_centre, h_neighbour, e, u]) per edge, without building the concatenation.

    The first layer is linear, so its weight splits by input block: the atom and state blocks
    are applied once per atom / structure and gathered to the edges, and only the bond block
    is an edge-sized matrix product (64 inputs instead of 192 or 208). Edges outnumber atoms
    about 30 to 1 at a 5 A cutoff, so this removes most of the model's largest product."""
    centre, neighbour = edge_index
    weight, bias = mlp.first_layer()
    n, e = nodes.shape[1], edges.shape[1]
    w_centre, w_neighbour, w_edge, w_state = weight.split([n, n, e, weight.shape[1] - 2 * n - e], dim=1)
    first = edges @ w_edge.t() if bias is None else torch.addmm(bias, edges, w_edge.t())
    # index_select, not [] indexing: its backward is index_add, much faster than index_put on CPU.
    # In-place adds: no new edge-sized tensors (a product's output is not saved for backward).
    first.add_((nodes @ w_centre.t()).index_select(0, centre)).add_((nodes @ w_neighbour.t()).index_select(0, neighbour))
    if state is not None:
        first.add_((state @ w_state.t()).index_select(0, edge_graph))
    return mlp.after_first_layer(first)
