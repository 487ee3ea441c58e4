"""Per-fidelity elemental reference energies (Ko & Ong eq. 3) and the energy scale (eq. 4).

Total energies of different functionals differ by eV per atom (PBE vs SCAN silicon: about
4.6 eV/atom), so each fidelity gets its own linear model E ~ sum_elements n_el * E_el,
fitted by least squares on that fidelity's training energies. The network then only learns
what is left. Composition matrices that do not determine every element (all structures
H2O-stoichiometric, say) get the minimum-norm solution, which predicts the same energy for
every composition the data covers.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from .data import LabelledStructure


def composition_matrix(structures: Sequence[LabelledStructure], elements: Sequence[int]) -> np.ndarray:
    column = {z: k for k, z in enumerate(elements)}
    counts = np.zeros((len(structures), len(elements)))
    for row, s in enumerate(structures):
        for z, n in zip(*np.unique(s.numbers, return_counts=True)):
            counts[row, column[int(z)]] = n
    return counts


def fit_elemental_energies(
    structures: Sequence[LabelledStructure], elements: Sequence[int], fidelities: Sequence[str]
) -> np.ndarray:
    """(n_fidelities, n_elements) energies per atom of each element, fitted per fidelity.

    A fidelity without any energy label (forces-only data) gets zeros: its energies are
    then relative, which the forces do not care about.
    """
    table = np.zeros((len(fidelities), len(elements)))
    for f, name in enumerate(fidelities):
        labelled = [s for s in structures if s.fidelity == name and s.has_energy]
        if not labelled:
            continue
        counts = composition_matrix(labelled, elements)
        energies = np.array([s.energy for s in labelled])
        table[f] = np.linalg.lstsq(counts, energies, rcond=None)[0]
    return table


def composition_span(
    structures: Sequence[LabelledStructure], elements: Sequence[int], fidelities: Sequence[str]
) -> np.ndarray:
    """(n_fidelities, n_elements, n_elements) projectors onto the compositions each fidelity's
    references were fitted on (the row space of its composition matrix). The fitted energy of
    a composition outside it is an extrapolation of the minimum-norm solution: for water-only
    data, an H atom comes out hundreds of eV off. A fidelity without energy labels gets the
    identity: its energies are relative anyway."""
    spans = np.tile(np.eye(len(elements)), (len(fidelities), 1, 1))
    for f, name in enumerate(fidelities):
        labelled = [s for s in structures if s.fidelity == name and s.has_energy]
        if labelled:
            _, singular, rows = np.linalg.svd(composition_matrix(labelled, elements), full_matrices=False)
            basis = rows[singular > 1e-8 * singular[0]]
            spans[f] = basis.T @ basis
    return spans


def force_scale(structures: Sequence[LabelledStructure]) -> float:
    """RMS of all training force components (eq. 4's sigma): the natural energy unit per atom
    for the network output. 1.0 when no structure has forces."""
    forces = [s.forces.ravel() for s in structures if s.forces is not None]
    values = np.concatenate(forces) if forces else np.empty(0)
    values = values[np.isfinite(values)]
    rms = float(np.sqrt(np.mean(values**2))) if values.size else 0.0
    return rms if rms > 0 else 1.0
