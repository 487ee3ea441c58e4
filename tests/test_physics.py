"""Physics of the potential: gradients, invariances, periodic images."""

import numpy as np
import pytest
import torch
from ase.build import bulk
from scipy.spatial.transform import Rotation

from conftest import rattled_si, water_dimer


def energy(potential, atoms, fidelity="PBE"):
    return float(potential(potential.graph(atoms, fidelity), forces=False)["energy"].detach()[0])


def predict(potential, atoms, fidelity="PBE", stress=False):
    out = potential(potential.graph(atoms, fidelity), forces=True, stress=stress)
    return {k: v.detach().numpy() for k, v in out.items()}


@pytest.mark.parametrize("make", [rattled_si, water_dimer], ids=["si-triclinic", "water-dimer"])
def test_forces_are_minus_energy_gradient(make, si_potential, water_potential):
    atoms = make()
    potential = si_potential if atoms[0].symbol == "Si" else water_potential
    forces = predict(potential, atoms)["forces"]
    assert np.abs(forces).max() > 100 * 1e-7  # well above the tolerance below: a comparison of zeros proves nothing
    h = 1e-5
    for i in range(len(atoms)):
        for d in range(3):
            plus, minus = atoms.copy(), atoms.copy()
            plus.positions[i, d] += h
            minus.positions[i, d] -= h
            numeric = -(energy(potential, plus) - energy(potential, minus)) / (2 * h)
            assert forces[i, d] == pytest.approx(numeric, abs=1e-7)


def test_stress_is_strain_derivative(si_potential):
    atoms = rattled_si()
    stress = predict(si_potential, atoms, stress=True)["stress"][0]
    h = 1e-5
    for a in range(3):
        for b in range(3):
            values = []
            for sign in (1, -1):
                strained = atoms.copy()
                deformation = np.eye(3)
                deformation[a, b] += sign * h
                strained.set_cell(atoms.cell.array @ deformation, scale_atoms=False)
                strained.positions = atoms.positions @ deformation
                values.append(energy(si_potential, strained))
            numeric = (values[0] - values[1]) / (2 * h) / atoms.get_volume()
            assert stress[a, b] == pytest.approx(numeric, abs=1e-8)


def test_stress_matches_ase_numerical_stress(si_potential):
    from ase.calculators.fd import calculate_numerical_stress

    from fidelity_adapters import FidelityCalculator

    atoms = rattled_si()
    atoms.calc = FidelityCalculator(si_potential, "PBE")
    analytic = atoms.get_stress()
    numeric = calculate_numerical_stress(atoms, eps=1e-5, force_consistent=False)
    np.testing.assert_allclose(analytic, numeric, atol=1e-8)


def test_rotation_translation_invariance(water_potential, si_potential):
    rotation = Rotation.from_euler("xyz", [0.3, -1.1, 2.0]).as_matrix()
    mol = water_dimer()
    ref = predict(water_potential, mol)
    moved = mol.copy()
    moved.positions = mol.positions @ rotation.T + [1.3, -2.0, 0.7]
    out = predict(water_potential, moved)
    assert out["energy"][0] == pytest.approx(ref["energy"][0], abs=1e-10)
    np.testing.assert_allclose(out["forces"], ref["forces"] @ rotation.T, atol=1e-10)

    crystal = rattled_si()
    ref = predict(si_potential, crystal, stress=True)
    turned = crystal.copy()
    turned.set_cell(crystal.cell.array @ rotation.T, scale_atoms=False)
    turned.positions = crystal.positions @ rotation.T + [0.4, 0.1, -0.3]
    out = predict(si_potential, turned, stress=True)
    assert out["energy"][0] == pytest.approx(ref["energy"][0], abs=1e-10)
    np.testing.assert_allclose(out["forces"], ref["forces"] @ rotation.T, atol=1e-10)
    np.testing.assert_allclose(out["stress"][0], rotation @ ref["stress"][0] @ rotation.T, atol=1e-10)


def test_permutation_invariance(water_potential):
    mol = water_dimer()
    order = np.random.default_rng(1).permutation(len(mol))
    ref = predict(water_potential, mol)
    out = predict(water_potential, mol[order])
    assert out["energy"][0] == pytest.approx(ref["energy"][0], abs=1e-10)
    np.testing.assert_allclose(out["forces"], ref["forces"][order], atol=1e-10)


def test_small_cell_equals_supercell_per_atom(si_potential):
    """A primitive cell (edges 3.84 A < 5 A cutoff) and its 3x3x3 supercell."""
    small = bulk("Si", "diamond", a=5.43)
    small.positions[1] += [0.05, -0.02, 0.03]
    big = small.repeat((3, 3, 3))
    e_small = predict(si_potential, small, stress=True)
    e_big = predict(si_potential, big, stress=True)
    assert e_big["energy"][0] / len(big) == pytest.approx(e_small["energy"][0] / len(small), abs=1e-9)
    np.testing.assert_allclose(e_big["forces"][:2], e_small["forces"], atol=1e-9)
    np.testing.assert_allclose(e_big["stress"], e_small["stress"], atol=1e-10)


def test_float32_default_agrees_with_float64():
    from conftest import small_potential

    p64 = small_potential(["Si"], ["PBE", "SCAN"], dtype=torch.float64, seed=3)
    p32 = small_potential(["Si"], ["PBE", "SCAN"], dtype=torch.float32, seed=3)
    atoms = rattled_si(repeat=2)
    a, b = predict(p64, atoms), predict(p32, atoms)
    assert b["forces"].dtype == np.float32
    assert a["energy"][0] == pytest.approx(b["energy"][0], abs=1e-3)
    np.testing.assert_allclose(a["forces"], b["forces"], atol=1e-4)
