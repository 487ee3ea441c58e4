"""Per-fidelity elemental reference energies (Ko & Ong eq. 3) and the energy scale (eq. 4).

Total energies of different functionals differ by eV per atom (PBE vs SCAN silicon: about
4.6 eV/atom), so each fidelity gets its own linear model E ~ sum_elements n_el * E_el,
fitted by least squares on that fidelity's training energies. The network then only learns
what is left. Composition matrices that do not determine every element (all structures
H2O-stoichiometric, say) get the minimum-norm solution, which predicts the same energy for
every composition the data covers.
"""

from __future__ import annotations

from typing import Iterable, Sequence

import numpy as np

from .data import LabelledStructure


# eigenvalues of C^T C below this fraction of the largest are rounding (a singular-value ratio of 1e-5)
_RANK_TOLERANCE = 1e-10


class ReferenceSums:
    """What the reference fit needs, summed in one pass over the structures (a stream from
    disk included, so memory does not grow with their number): per fidelity C^T C and C^T E of
    the composition matrix C and energies E of its labelled structures, and the squared force
    components of all of them. The least-squares solution from these sums is the minimum-norm
    one, as from C itself; directions of composition the data does not determine (rank
    tolerance `_RANK_TOLERANCE`) get no reference and lie outside the span."""

    def __init__(self, elements: Sequence[int], fidelities: Sequence[str]):
        self.column = {int(z): k for k, z in enumerate(elements)}
        self.row = {name: f for f, name in enumerate(fidelities)}
        self.gram = np.zeros((len(fidelities), len(elements), len(elements)))
        self.moment = np.zeros((len(fidelities), len(elements)))
        self.labelled = np.zeros(len(fidelities), dtype=np.int64)
        self.force_squares, self.force_count = 0.0, 0

    @classmethod
    def of(cls, structures: Iterable[LabelledStructure], elements: Sequence[int], fidelities: Sequence[str]) -> "ReferenceSums":
        sums = cls(elements, fidelities)
        for s in structures:
            sums.add(s)
        return sums

    def add(self, structure: LabelledStructure, energy: float | None = None) -> None:
        """Count one structure; `energy` replaces its label (a residual around a network)."""
        s = structure
        if s.forces is not None:
            values = s.forces[np.isfinite(s.forces)]
            self.force_squares += float(np.sum(values**2))
            self.force_count += values.size
        energy = s.energy if energy is None else energy
        f = self.row.get(s.fidelity)
        if f is None or not np.isfinite(energy):
            return
        counts = np.zeros(len(self.column))
        for z, n in zip(*np.unique(s.numbers, return_counts=True)):
            counts[self.column[int(z)]] = n
        self.gram[f] += np.outer(counts, counts)
        self.moment[f] += counts * energy
        self.labelled[f] += 1

    def _basis(self, f: int) -> tuple[np.ndarray, np.ndarray]:
        values, vectors = np.linalg.eigh(self.gram[f])
        keep = values > _RANK_TOLERANCE * values.max()
        return values[keep], vectors[:, keep]

    def energies(self) -> np.ndarray:
        """(n_fidelities, n_elements) energies per atom of each element, fitted per fidelity.
        A fidelity without any energy label (forces-only data) gets zeros: its energies are
        then relative, which the forces do not care about."""
        table = np.zeros(self.moment.shape)
        for f in np.flatnonzero(self.labelled):
            values, basis = self._basis(f)
            table[f] = basis @ ((basis.T @ self.moment[f]) / values)
        return table

    def spans(self) -> np.ndarray:
        """(n_fidelities, n_elements, n_elements) projectors onto the compositions each
        fidelity's references were fitted on (the row space of its composition matrix). The
        fitted energy of a composition outside it is an extrapolation of the minimum-norm
        solution: for water-only data, an H atom comes out hundreds of eV off. A fidelity
        without energy labels gets the identity: its energies are relative anyway."""
        spans = np.tile(np.eye(self.gram.shape[1]), (len(self.gram), 1, 1))
        for f in np.flatnonzero(self.labelled):
            _, basis = self._basis(f)
            spans[f] = basis @ basis.T
        return spans

    def force_scale(self) -> float:
        """RMS of all training force components (eq. 4's sigma): the natural energy unit per
        atom for the network output. 1.0 when no structure has forces."""
        rms = float(np.sqrt(self.force_squares / self.force_count)) if self.force_count else 0.0
        return rms if rms > 0 else 1.0


def fit_elemental_energies(structures: Iterable[LabelledStructure], elements: Sequence[int], fidelities: Sequence[str]) -> np.ndarray:
    return ReferenceSums.of(structures, elements, fidelities).energies()


def force_scale(structures: Iterable[LabelledStructure]) -> float:
    return ReferenceSums.of(structures, [], []).force_scale()
