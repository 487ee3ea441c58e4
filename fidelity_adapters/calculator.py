"""ASE calculator for a potential at one named fidelity."""

from __future__ import annotations

import numpy as np
from ase.calculators.calculator import Calculator, all_changes

from .data import from_atoms


def unlabelled_structure(atoms, fidelity: str):
    """The geometry of ASE Atoms at a fidelity, without whatever labels they carry (a calculator
    predicts them; an old result attached to the atoms must not be read as a label)."""
    structure = from_atoms(atoms, fidelity=fidelity, label="atoms")
    structure.energy, structure.forces, structure.stress = float("nan"), None, None
    return structure


def voigt(stress: np.ndarray) -> np.ndarray:
    """3x3 stress -> ASE's Voigt order xx, yy, zz, yz, xz, xy (the components as they are)."""
    return np.array([stress[0, 0], stress[1, 1], stress[2, 2], stress[1, 2], stress[0, 2], stress[0, 1]])


class FidelityCalculator(Calculator):
    """Energy, forces and (for fully periodic cells) stress at `fidelity`.

    The fidelity is required and checked against the model's names when the calculator is
    made: a typo is an error here, not a silent default in the middle of an MD run. It is an
    ASE parameter: changing it (`calc.fidelity = ...` or `calc.set(fidelity=...)`) discards
    the results computed at the old one.
    """

    implemented_properties = ["energy", "free_energy", "forces", "stress", "energies"]

    def __init__(self, potential, fidelity: str, **kwargs):
        self.potential = potential.eval()
        super().__init__(**kwargs)
        self.fidelity = fidelity

    @property
    def fidelity(self) -> str:
        return self.parameters["fidelity"]

    @fidelity.setter
    def fidelity(self, name: str) -> None:
        self.set(fidelity=name)

    def set(self, **kwargs) -> dict:
        if "fidelity" in kwargs:
            self.potential.fidelity_state.index(kwargs["fidelity"])
        changed = super().set(**kwargs)
        if changed:
            self.reset()
        return changed

    @classmethod
    def from_file(cls, path, fidelity: str, device: str = "cpu") -> "FidelityCalculator":
        from .serialization import load_potential

        return cls(load_potential(path, device=device), fidelity)

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        super().calculate(atoms, properties, system_changes)
        graph = self.potential.graph(unlabelled_structure(self.atoms, self.fidelity))
        want_stress = "stress" in properties and bool(self.atoms.pbc.all())
        out = self.potential(graph, forces=True, stress=want_stress)
        energy = float(out["energy"].detach()[0])
        self.results = {
            "energy": energy,
            "free_energy": energy,
            "forces": out["forces"].detach().cpu().numpy().astype(np.float64),
            "energies": out["atomic_energies"].detach().cpu().numpy().astype(np.float64),
        }
        if want_stress:
            self.results["stress"] = voigt(out["stress"].detach().cpu().numpy().astype(np.float64)[0])
