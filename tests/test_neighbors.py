"""The neighbour list against ASE's, and triplets against a brute-force enumeration."""

import numpy as np
import pytest
from ase import Atoms
from ase.build import bulk, molecule
from ase.neighborlist import neighbor_list as ase_neighbor_list

from backbones.m3gnet.triplets import triplet_edge_pairs
from fidelity_adapters.neighbors import neighbor_list, neighbor_list_and_closest


def edges(atoms, cutoff):
    i, j, shifts = neighbor_list(atoms.positions, atoms.cell.array, atoms.pbc, cutoff)
    return sorted(zip(i.tolist(), j.tolist(), map(tuple, shifts.tolist())))


def ase_edges(atoms, cutoff):
    i, j, shifts = ase_neighbor_list("ijS", atoms, cutoff)
    return sorted(zip(i.tolist(), j.tolist(), map(tuple, shifts.tolist())))


@pytest.mark.parametrize("seed", range(25))
def test_matches_ase_on_random_cells(seed):
    """Triclinic, possibly tiny cells (many images), random periodicity per direction."""
    rng = np.random.default_rng(seed)
    cell = rng.normal(size=(3, 3)) * 1.5 + np.eye(3) * rng.uniform(2.0, 6.0)
    n = int(rng.integers(1, 10))
    atoms = Atoms(f"H{n}", scaled_positions=rng.uniform(-0.3, 1.3, size=(n, 3)), cell=cell, pbc=rng.random(3) < 0.7)
    cutoff = rng.uniform(1.0, 6.0)
    assert edges(atoms, cutoff) == ase_edges(atoms, cutoff)


def test_molecule_and_isolated_atom():
    mol = molecule("CH3CH2OH")
    assert edges(mol, 2.5) == ase_edges(mol, 2.5)
    single = Atoms("Si", positions=[[0, 0, 0]])
    assert edges(single, 5.0) == []


def test_isolated_atom_in_small_periodic_cell_sees_its_images():
    atoms = Atoms("Si", positions=[[0, 0, 0]], cell=np.eye(3) * 2.0, pbc=True)
    found = edges(atoms, 3.0)
    assert len(found) == len(ase_edges(atoms, 3.0)) == 6 + 12  # faces (2.0) and edges (2.83) of the cube


def test_large_supercell_matches_ase():
    atoms = bulk("Si", "diamond", 5.43).repeat(4)
    atoms.rattle(0.05, seed=3)
    assert edges(atoms, 5.0) == ase_edges(atoms, 5.0)


def test_zero_volume_cell_is_an_error():
    atoms = Atoms("H2", positions=[[0, 0, 0], [1, 0, 0]], cell=[[1, 0, 0], [2, 0, 0], [0, 0, 3]], pbc=True)
    with pytest.raises(ValueError, match="zero"):
        neighbor_list(atoms.positions, atoms.cell.array, atoms.pbc, 2.0)


def test_triplets_match_brute_force():
    rng = np.random.default_rng(0)
    n_atoms, n_edges = 7, 60
    centre = rng.integers(0, n_atoms, n_edges)
    within = rng.random(n_edges) < 0.6
    got = triplet_edge_pairs(centre, within, n_atoms)
    expected = {(a, b) for a in range(n_edges) for b in range(n_edges)
                if a != b and within[a] and within[b] and centre[a] == centre[b]}  # fmt: skip
    assert set(map(tuple, got.T.tolist())) == expected
    assert got.shape[1] == len(expected)


@pytest.mark.parametrize("seed", range(5))
def test_closest_is_the_shortest_edge(seed):
    """The graph builder's overlap check relies on it; random triclinic cells and a molecule."""
    rng = np.random.default_rng(seed)
    cell = rng.normal(size=(3, 3)) + np.eye(3) * 4.0
    atoms = Atoms("H6", scaled_positions=rng.uniform(0, 1, size=(6, 3)), cell=cell, pbc=seed != 0)
    i, j, shifts, closest = neighbor_list_and_closest(atoms.positions, atoms.cell.array, atoms.pbc, 3.0)
    lengths = np.linalg.norm(atoms.positions[j] + shifts @ atoms.cell.array - atoms.positions[i], axis=1)
    assert len(lengths) and lengths[closest] == pytest.approx(lengths.min())
    assert neighbor_list_and_closest(atoms.positions, atoms.cell.array, atoms.pbc, 1e-3)[3] == -1


def test_nearly_singular_cell_is_refused_at_once_naming_the_structure(si_potential):
    from fidelity_adapters import from_atoms

    atoms = Atoms("Si2", positions=[[0, 0, 0], [2.5, 0, 2.5]], cell=[[5, 0, 0], [5, 1e-6, 0], [0, 0, 5]], pbc=True)
    atoms.info["fidelity"] = "PBE"
    with pytest.raises(ValueError, match=r"thin cell: cell too thin for a .* A cutoff: face distances"):
        si_potential.graph(from_atoms(atoms, label="thin cell"))
    # (refused before searching; it used to take minutes and 15 GiB)
    flat = Atoms("Si", positions=[[0, 0, 0]], cell=[[5, 0, 0], [5, 0, 0], [0, 0, 5]], pbc=True)
    with pytest.raises(ValueError, match="flat cell: periodic cell has zero volume"):
        si_potential.graph(from_atoms(flat, fidelity="PBE", label="flat cell"))
