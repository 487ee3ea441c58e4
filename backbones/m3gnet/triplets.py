"""Three-body (triplet) indices for M3GNet, built with numba.

A triplet is an ordered pair of distinct edges (i->j, i->k) that share the centre atom i and
are both shorter than the three-body cutoff. The pair is stored as edge ids so batching can
offset them (graph key `triplet_edge_ids`).
"""

from __future__ import annotations

import numba
import numpy as np
import torch


@numba.njit(cache=True)
def triplet_edge_pairs(centre: np.ndarray, within: np.ndarray, n_atoms: int) -> np.ndarray:
    """(2, T) array of edge ids (ij, ik), ij != ik, same centre, both flagged `within`."""
    counts = np.zeros(n_atoms + 1, np.int64)
    for e in range(centre.shape[0]):
        if within[e]:
            counts[centre[e] + 1] += 1
    total = 0
    for a in range(1, n_atoms + 1):
        total += counts[a] * (counts[a] - 1)
        counts[a] += counts[a - 1]
    edges_of = np.empty(counts[n_atoms], np.int64)
    fill = counts[:-1].copy()
    for e in range(centre.shape[0]):
        if within[e]:
            edges_of[fill[centre[e]]] = e
            fill[centre[e]] += 1
    out = np.empty((2, total), np.int64)
    t = 0
    for a in range(n_atoms):
        for p in range(counts[a], counts[a + 1]):
            for q in range(counts[a], counts[a + 1]):
                if p != q:
                    out[0, t] = edges_of[p]
                    out[1, t] = edges_of[q]
                    t += 1
    return out


@numba.njit(cache=True)
def shorter_than(pos, cell, centre, neighbour, shift, cutoff):
    """Mask of the edges shorter than cutoff (one pass, no (E, 3) temporaries)."""
    within = np.empty(centre.shape[0], np.bool_)
    cutoff2 = cutoff * cutoff
    for e in range(centre.shape[0]):
        r2 = 0.0
        for d in range(3):
            v = pos[neighbour[e], d] - pos[centre[e], d]
            for c in range(3):
                v += shift[e, c] * cell[c, d]
            r2 += v * v
        within[e] = r2 < cutoff2
    return within


def triplets_of_graph(graph, three_body_cutoff: float) -> np.ndarray:
    """Triplet edge ids of one AtomicGraph (positions and shifts as stored in it)."""
    pos = graph.pos.detach().cpu().numpy()
    cell = graph.cell.detach().cpu().numpy().reshape(3, 3)
    i, j = graph.edge_index.cpu().numpy()
    within = shorter_than(pos, cell, i, j, graph.edge_shift.cpu().numpy(), three_body_cutoff)
    return triplet_edge_pairs(i, within, int(graph.num_nodes))


def triplets_in_torch(centre: torch.Tensor, lengths: torch.Tensor, cutoff: float, n_atoms: int) -> torch.Tensor:
    """The same triplets as triplet_edge_pairs (in another order), from tensor operations only,
    for an exported model whose host supplies nothing but a neighbour list. Edges within the
    cutoff are grouped by centre atom; each edge is paired with every other edge of its group."""
    within = (lengths < cutoff).nonzero().squeeze(1)
    centres = centre.index_select(0, within)
    order = torch.argsort(centres, stable=True)
    edges, centres = within.index_select(0, order), centres.index_select(0, order)
    # index_add, not bincount: AOTInductor has no C implementation of bincount
    group_size = torch.zeros(n_atoms, dtype=torch.int64, device=centre.device).index_add(0, centres, torch.ones_like(centres))
    group_start = torch.cumsum(group_size, 0) - group_size
    partners = group_size.index_select(0, centres)  # per edge: its group's size, itself included
    first = torch.repeat_interleave(torch.arange(edges.shape[0], device=edges.device), partners)
    rank = torch.arange(first.shape[0], device=edges.device) - (torch.cumsum(partners, 0) - partners).index_select(0, first)
    second = group_start.index_select(0, centres.index_select(0, first)) + rank
    distinct = (second != first).nonzero().squeeze(1)
    return torch.stack([edges.index_select(0, first.index_select(0, distinct)), edges.index_select(0, second.index_select(0, distinct))])
