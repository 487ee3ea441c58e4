"""The graph the model actually sees, end to end, against plain references.

test_neighbors.py checks neighbor_list() against ASE and triplet_edge_pairs() on synthetic
index arrays. Here the whole `Potential.graph` path is checked on real geometries: its edges
(with their periodic shifts) against ASE's neighbour list, and its triplets (numba, with the
4 A filter applied to vectors rebuilt from positions, shifts and cell) against a plain Python
enumeration over ASE's pairs; then the paper-size model in float32 against float64.
"""

from __future__ import annotations

from collections import defaultdict

import numpy as np
import pytest
import torch
from ase.build import bulk
from ase.neighborlist import neighbor_list as ase_neighbor_list
from conftest import rattled_si, water_dimer

from fidelity_adapters import m3gnet_potential


def rattled_cubic_si_64(seed=0):
    atoms = bulk("Si", "diamond", a=5.43, cubic=True).repeat(2)
    atoms.rattle(stdev=0.05, seed=seed)
    return atoms


def small_triclinic():
    """Two Si atoms in a sheared primitive cell (edges 3.84 A < 5 A cutoff: many images)."""
    return rattled_si(repeat=1, seed=4, shear=0.6)


def reference_graph(atoms, cutoff, three_body_cutoff):
    """Edges (i, j, S) from ASE and ordered triplets ((i, j, S), (i, k, S')) by a plain loop:
    distinct edges with the same centre, both shorter than three_body_cutoff."""
    i, j, shifts, d = ase_neighbor_list("ijSd", atoms, cutoff)
    edges = [(a, b, tuple(s)) for a, b, s in zip(i.tolist(), j.tolist(), shifts.tolist())]
    by_centre = defaultdict(list)
    for edge, length in zip(edges, d):
        if length < three_body_cutoff:
            by_centre[edge[0]].append(edge)
    triplets = []
    for bonds in by_centre.values():
        for first in bonds:
            for second in bonds:
                if first != second:
                    triplets.append((first, second))
    return edges, triplets


@pytest.mark.parametrize("make", [rattled_cubic_si_64, small_triclinic], ids=["si64", "triclinic"])
def test_graph_edges_and_triplets_match_plain_reference(make):
    atoms = make()
    potential = m3gnet_potential(["Si"], ["PBE"])
    backbone = potential.backbone
    graph = potential.graph(atoms, "PBE")

    i, j = graph.edge_index.tolist()
    shifts = [tuple(int(round(x)) for x in s) for s in graph.edge_shift.tolist()]
    edges = list(zip(i, j, shifts))
    ref_edges, ref_triplets = reference_graph(atoms, backbone.cutoff, backbone.three_body_cutoff)
    assert len(edges) == len(set(edges))
    assert sorted(edges) == sorted(ref_edges)

    ij, ik = graph.triplet_edge_ids.tolist()
    triplets = [(edges[a], edges[b]) for a, b in zip(ij, ik)]
    assert len(triplets) == len(ref_triplets)
    assert sorted(triplets) == sorted(ref_triplets)
    # the count matgl's create_line_graph gives: n (n - 1) per centre over bonds within 4 A
    vectors = atoms.positions[j] + np.array(shifts) @ atoms.cell.array - atoms.positions[i]
    per_centre = np.bincount(np.array(i)[np.linalg.norm(vectors, axis=1) < backbone.three_body_cutoff], minlength=len(atoms))
    assert len(triplets) == int((per_centre * (per_centre - 1)).sum())


@pytest.mark.parametrize("case", ["si64", "water_dimer"])
def test_float32_and_float64_agree_for_paper_size_model(case):
    """The paper-size network (64 wide, 3 blocks) in float32 against the same weights in
    float64: energies to 1e-4 relative, forces to 1e-3 of the largest force component."""
    if case == "si64":
        atoms, elements = rattled_cubic_si_64(seed=1), ["Si"]
    else:
        atoms, elements = water_dimer(), ["H", "O"]
    p32 = m3gnet_potential(elements, ["PBE"], seed=3)
    p64 = m3gnet_potential(elements, ["PBE"], seed=3).to(torch.float64)
    assert p32.dtype == torch.float32 and p64.dtype == torch.float64
    graph = p32.graph(atoms, "PBE")
    a, b = p64(graph, forces=True), p32(graph, forces=True)
    e64, e32 = float(a["energy"][0].detach()), float(b["energy"][0].detach())
    scale = max(abs(e64), float(a["atomic_energies"].detach().abs().sum()))
    assert abs(e32 - e64) <= 1e-4 * scale
    f64, f32 = a["forces"].detach().numpy(), b["forces"].detach().double().numpy()
    assert np.abs(f32 - f64).max() <= 1e-3 * np.abs(f64).max()


def test_split_first_layer_equals_the_concatenated_mlp():
    """edge_mlp applies the first layer per atom and gathers; the plain formula concatenates
    [h_centre, h_neighbour, e, u] per edge. Same numbers, with and without a global state
    and a hidden layer (with one, the SiLU of both halves is applied once, stacked)."""
    from backbones.m3gnet.layers import GatedMLP, edge_mlp

    torch.manual_seed(0)
    nodes, edges = torch.randn(7, 5, dtype=torch.float64), torch.randn(20, 4, dtype=torch.float64)
    edge_index = torch.randint(0, 7, (2, 20))
    edge_graph = torch.randint(0, 2, (20,))
    for state, hidden in ((None, [6]), (torch.randn(2, 3, dtype=torch.float64), [6]), (None, [])):
        extra = [] if state is None else [state[edge_graph]]
        mlp = GatedMLP([14 + (0 if state is None else 3), *hidden, 4]).double()
        plain = mlp(torch.cat([nodes[edge_index[0]], nodes[edge_index[1]], edges, *extra], dim=1))
        assert torch.allclose(edge_mlp(mlp, nodes, edges, state, edge_index, edge_graph), plain, atol=1e-12)


def test_three_body_radial_per_edge_equals_per_triplet():
    from scipy.special import eval_legendre, spherical_jn

    from backbones.m3gnet.basis import SphericalBesselHarmonics

    basis = SphericalBesselHarmonics(3, 3, 4.0).double()
    r = torch.linspace(0.01, 3.99, 50, dtype=torch.float64)
    cos = torch.linspace(-1, 1, 50, dtype=torch.float64)
    ik = torch.randint(0, 50, (80,))
    gathered = basis.with_angles(basis.radial(r).index_select(0, ik), cos[ik]).numpy()
    r_t, cos_t = r[ik].numpy(), cos[ik].numpy()
    plain = np.stack(
        [
            float(basis.norm[l, n]) * spherical_jn(l, float(basis.roots[l, n]) * r_t / 4.0)
            * np.sqrt((2 * l + 1) / (4 * np.pi)) * eval_legendre(l, cos_t)
            for l in range(3) for n in range(3)
        ],
        axis=1,
    )  # fmt: skip
    assert np.allclose(gathered, plain, atol=1e-10)


def test_inference_forces_keep_no_tensors_for_weight_gradients(monkeypatch):
    """An E+F call with training=False does not record what weight gradients would need
    (less memory), gives the same forces, and leaves each parameter's requires_grad as it
    was, a frozen (transfer-learning) layer included."""
    import fidelity_adapters.potential as potential_module

    potential = m3gnet_potential(["Si"], ["PBE"])
    potential.backbone.atom_embedding.weight.requires_grad_(False)
    flags = {name: p.requires_grad for name, p in potential.named_parameters()}
    graph = potential.graph(rattled_cubic_si_64(), "PBE")

    def forces_and_saved_numbers():
        saved = []
        with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t.numel()) or t, lambda t: t):
            forces = potential(graph, forces=True, stress=True)["forces"]
        return forces, sum(saved)

    forces, saved = forces_and_saved_numbers()
    assert {name: p.requires_grad for name, p in potential.named_parameters()} == flags
    monkeypatch.setattr(potential_module, "_parameters_frozen", lambda module: potential_module.nullcontext())
    plain_forces, plain_saved = forces_and_saved_numbers()
    assert torch.allclose(forces, plain_forces, atol=1e-6)
    assert saved < 0.9 * plain_saved
