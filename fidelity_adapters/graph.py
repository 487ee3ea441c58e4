"""The one graph container, `AtomicGraph` (a torch_geometric Data), and its construction.

Positions and cell stay in the graph and edge vectors are recomputed from them in the
forward pass (pos[j] + shift @ cell - pos[i]), so forces and stress come from autograd.
Keys ending in `_edge_ids` index edges; batching offsets them by the edge count, which is
how backbones add line-graph indices (M3GNet's triplets) that survive batching.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from ase.data import chemical_symbols
from torch_geometric.data import Data

from .data import MIN_DISTANCE, LabelledStructure, check_closest_pair, validate
from .neighbors import neighbor_list_and_closest


class AtomicGraph(Data):
    def __inc__(self, key, value, *args, **kwargs):
        if key.endswith("_edge_ids"):
            return self.edge_index.size(1)
        return super().__inc__(key, value, *args, **kwargs)

    def __cat_dim__(self, key, value, *args, **kwargs):
        if key.endswith("_edge_ids"):
            return -1
        return super().__cat_dim__(key, value, *args, **kwargs)


def species_indices(numbers: np.ndarray, elements: Sequence[int], label: str) -> np.ndarray:
    """Map atomic numbers to rows of the model's element table; unknown elements are errors."""
    lookup = np.full(max(max(elements), int(numbers.max())) + 1, -1, dtype=np.int64)
    lookup[list(elements)] = np.arange(len(elements))
    species = lookup[numbers]
    if (species < 0).any():
        unknown = sorted({chemical_symbols[z] for z in numbers[species < 0]})
        known = [chemical_symbols[z] for z in elements]
        raise ValueError(f"{label}: element(s) {unknown} unknown to the model, which knows {known}")
    return species


def build_graph(
    structure: LabelledStructure,
    elements: Sequence[int],
    fidelity_id: int,
    cutoff: float,
    check: bool = True,
) -> AtomicGraph:
    """Turn a labelled structure into an AtomicGraph with edges to `cutoff` (Angstrom)."""
    s = structure
    if check:  # overlapping atoms are found from the graph's own neighbour list below
        validate(s, overlaps=cutoff < MIN_DISTANCE)
    species = species_indices(s.numbers, elements, s.label)
    try:
        i, j, shifts, closest = neighbor_list_and_closest(s.positions, s.cell, s.pbc, cutoff)
    except ValueError as error:  # cell errors, named by the structure they belong to
        raise ValueError(f"{s.label}: {error}") from None
    if check:
        check_closest_pair(s, i, j, shifts, closest)
    n = len(s)
    forces = s.forces if s.forces is not None else np.full((n, 3), np.nan)
    stress = s.stress if s.stress is not None else np.full((3, 3), np.nan)
    return AtomicGraph(
        pos=torch.as_tensor(s.positions, dtype=torch.float64),
        species=torch.as_tensor(species),
        cell=torch.as_tensor(s.cell, dtype=torch.float64).reshape(1, 3, 3),
        pbc=torch.as_tensor(s.pbc).reshape(1, 3),
        edge_index=torch.as_tensor(np.stack([i, j])),
        edge_shift=torch.as_tensor(shifts, dtype=torch.float64),
        fidelity=torch.tensor([fidelity_id]),
        energy=torch.tensor([s.energy], dtype=torch.float64),
        forces=torch.as_tensor(forces, dtype=torch.float64),
        stress=torch.as_tensor(stress, dtype=torch.float64).reshape(1, 3, 3),
        natoms=torch.tensor([n]),
        num_nodes=n,
    )
