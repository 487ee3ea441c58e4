"""DFT labels (energy, forces) for molecules and clusters with PySCF, at named fidelities.

Used to make the bundled water-cluster data set with the project's own code. Labels are
appended to an extxyz file one structure at a time, so a killed run loses at most the
structure in progress and resumes where it stopped. `check_convergence` relabels a sample
at a finer grid, with the grid's response in the gradient, and says whether the labels
stand: meta-GGAs such as SCAN carry hundreds of meV/A of grid noise in their forces at
grids where PBE is already exact.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Iterable

import numpy as np
from ase import Atoms, units
from ase.calculators.singlepoint import SinglePointCalculator
from ase.io import read, write


@dataclass(frozen=True)
class DFTLevel:
    """A level of theory and the numerical settings that decide how well it is converged.

    grid_response adds the derivative of the moving integration grid to the forces; PySCF
    leaves it out by default, which for meta-GGAs is most of the force error.
    """

    xc: str
    basis: str = "def2-svp"
    grid_level: int = 3
    grid_response: bool = True
    conv_tol: float = 1e-9

    def describe(self) -> str:
        response = "with" if self.grid_response else "without"
        return f"{self.xc}/{self.basis}, density fitting, grid level {self.grid_level} {response} grid response, SCF conv_tol {self.conv_tol:g} Ha"


# Chosen by check_convergence on the bundled clusters (numbers in data_files/README.md):
# PBE is converged at grid 3 even without grid response; r2SCAN needs the response; SCAN
# needs both the response and grid 5.
LEVELS = {
    "PBE": DFTLevel("PBE", grid_level=3, grid_response=False),
    "r2SCAN": DFTLevel("r2SCAN", grid_level=3),
    "SCAN": DFTLevel("SCAN", grid_level=5),
}

# The tolerances a label set must meet against the finer reference.
ENERGY_TOLERANCE = 1e-4  # eV/atom
FORCE_TOLERANCE = 5e-3  # eV/A, mean absolute difference of force components


def level_of(fidelity: str) -> DFTLevel:
    if fidelity not in LEVELS:
        raise ValueError(f"no DFT settings for fidelity {fidelity!r}; known: {sorted(LEVELS)}")
    return LEVELS[fidelity]


def label(atoms: Atoms, fidelity: str, level: DFTLevel | None = None) -> Atoms:
    """Return a copy of atoms with energy (eV) and forces (eV/A) at the named fidelity."""
    from pyscf import dft, gto

    level = level or level_of(fidelity)
    mol = gto.M(
        atom=[(s, tuple(p)) for s, p in zip(atoms.get_chemical_symbols(), atoms.positions)],
        basis=level.basis,
        unit="Angstrom",
        charge=0,
        spin=0,
        verbose=0,
    )
    mf = dft.RKS(mol).density_fit()
    mf.xc = level.xc
    mf.grids.level = level.grid_level
    mf.conv_tol = level.conv_tol
    energy_hartree = mf.kernel()
    if not mf.converged:
        raise RuntimeError(f"SCF did not converge for struct_id={atoms.info.get('struct_id')} at {fidelity}")
    gradient_method = mf.nuc_grad_method()
    gradient_method.grid_response = level.grid_response
    gradient = gradient_method.kernel()
    labelled = Atoms(atoms.numbers, positions=atoms.positions)
    labelled.info.update(atoms.info)
    labelled.info["fidelity"] = fidelity
    labelled.calc = SinglePointCalculator(
        labelled, energy=energy_hartree * units.Hartree, forces=-gradient * units.Hartree / units.Bohr
    )
    return labelled


@dataclass(frozen=True)
class ConvergenceCheck:
    """Differences between labels at `level` and at a finer `reference` on the same structures."""

    fidelity: str
    level: DFTLevel
    reference: DFTLevel
    n_structures: int
    energy_mae: float  # eV/atom
    energy_max: float
    force_mae: float  # eV/A
    force_max: float

    @property
    def passed(self) -> bool:
        return self.energy_mae < ENERGY_TOLERANCE and self.force_mae < FORCE_TOLERANCE

    def report(self) -> str:
        verdict = "PASS" if self.passed else "FAIL"
        return (
            f"{verdict} {self.fidelity}: {self.level.describe()}\n"
            f"  against {self.reference.describe()}, {self.n_structures} structures:\n"
            f"  energy {1000 * self.energy_mae:.3f} meV/atom (largest {1000 * self.energy_max:.3f}), "
            f"forces {1000 * self.force_mae:.2f} meV/A (largest {1000 * self.force_max:.2f}); "
            f"tolerances {1000 * ENERGY_TOLERANCE:g} meV/atom, {1000 * FORCE_TOLERANCE:g} meV/A"
        )


def finer(level: DFTLevel, grid_level: int = 8) -> DFTLevel:
    """The same functional and basis on a finer grid with grid response: the reference of a check."""
    return replace(level, grid_level=max(grid_level, level.grid_level + 1), grid_response=True)


def check_convergence(
    structures: Iterable[Atoms], fidelity: str, level: DFTLevel | None = None, reference: DFTLevel | None = None
) -> ConvergenceCheck:
    """Label structures at level and at the finer reference and measure the differences."""
    level = level or level_of(fidelity)
    reference = reference or finer(level)
    energy_errors, force_errors = [], []
    for atoms in structures:
        ours, ref = label(atoms, fidelity, level), label(atoms, fidelity, reference)
        energy_errors.append(abs(ours.get_potential_energy() - ref.get_potential_energy()) / len(atoms))
        force_errors.append(np.abs(ours.get_forces() - ref.get_forces()).ravel())
    if not energy_errors:
        raise ValueError("check_convergence needs at least one structure")
    forces = np.concatenate(force_errors)
    return ConvergenceCheck(
        fidelity, level, reference, len(energy_errors),
        float(np.mean(energy_errors)), float(np.max(energy_errors)), float(forces.mean()), float(forces.max()),
    )


def labelled_keys(path: str | os.PathLike) -> set[tuple[int, str]]:
    """(struct_id, fidelity) of every structure already labelled in path."""
    path = Path(path)
    if not path.exists() or path.stat().st_size == 0:
        return set()
    return {(int(a.info["struct_id"]), a.info["fidelity"]) for a in read(path, ":")}


def label_into(structures: Iterable[Atoms], fidelity: str, path: str | os.PathLike, level: DFTLevel | None = None) -> None:
    """Label structures not yet in path (matched by info['struct_id']) and append them."""
    path = Path(path)
    done = labelled_keys(path)
    for atoms in structures:
        key = (int(atoms.info["struct_id"]), fidelity)
        if key in done:
            continue
        labelled = label(atoms, fidelity, level)
        with open(path, "a") as handle:
            write(handle, labelled, format="extxyz")
            handle.flush()
            os.fsync(handle.fileno())
        print(f"labelled struct_id={key[0]} {fidelity} E={labelled.get_potential_energy():.4f} eV", flush=True)
