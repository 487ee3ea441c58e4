"""The calculator's stress against ASE's numerical stress (its Voigt path); the physics of every
backbone (gradients, invariances, periodic images) is in tests/conformance."""

import numpy as np
from ase.calculators.fd import calculate_numerical_stress

from conftest import rattled_si
from fidelity_adapters import FidelityCalculator


def test_stress_matches_ase_numerical_stress(si_potential):
    atoms = rattled_si()
    atoms.calc = FidelityCalculator(si_potential, "PBE")
    analytic = atoms.get_stress()
    numeric = calculate_numerical_stress(atoms, eps=1e-5, force_consistent=False)
    np.testing.assert_allclose(analytic, numeric, atol=1e-8)
