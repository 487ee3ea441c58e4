"""DFT labels (energy, forces) for molecules and clusters with PySCF, at named fidelities.

Used to make the bundled PBE/SCAN data set with the project's own code. Labels are
appended to an extxyz file one structure at a time, so a killed run loses at most the
structure in progress and resumes where it stopped.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

from ase import Atoms, units
from ase.calculators.singlepoint import SinglePointCalculator
from ase.io import read, write


@dataclass(frozen=True)
class DFTLevel:
    """A level of theory: exchange-correlation functional, basis and integration grid."""

    xc: str
    basis: str = "def2-svp"
    grid_level: int = 3


# SCAN is known to be sensitive to the integration grid, hence the finer grid.
LEVELS = {
    "PBE": DFTLevel("PBE", grid_level=3),
    "SCAN": DFTLevel("SCAN", grid_level=4),
}


def label(atoms: Atoms, fidelity: str, level: DFTLevel | None = None) -> Atoms:
    """Return a copy of atoms with energy (eV) and forces (eV/A) at the named fidelity."""
    from pyscf import dft, gto

    level = level or LEVELS[fidelity]
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
    mf.conv_tol = 1e-9
    energy_hartree = mf.kernel()
    if not mf.converged:
        raise RuntimeError(f"SCF did not converge for struct_id={atoms.info.get('struct_id')} at {fidelity}")
    gradient = mf.nuc_grad_method().kernel()
    labelled = Atoms(atoms.numbers, positions=atoms.positions)
    labelled.info.update(atoms.info)
    labelled.info["fidelity"] = fidelity
    labelled.calc = SinglePointCalculator(
        labelled, energy=energy_hartree * units.Hartree, forces=-gradient * units.Hartree / units.Bohr
    )
    return labelled


def _done(path: Path) -> set[tuple[int, str]]:
    if not path.exists() or path.stat().st_size == 0:
        return set()
    return {(int(a.info["struct_id"]), a.info["fidelity"]) for a in read(path, ":")}


def label_into(structures: Iterable[Atoms], fidelity: str, path: str | os.PathLike) -> None:
    """Label structures not yet in path (matched by info['struct_id']) and append them."""
    path = Path(path)
    done = _done(path)
    for atoms in structures:
        key = (int(atoms.info["struct_id"]), fidelity)
        if key in done:
            continue
        labelled = label(atoms, fidelity)
        with open(path, "a") as handle:
            write(handle, labelled, format="extxyz")
            handle.flush()
            os.fsync(handle.fileno())
        print(f"labelled struct_id={key[0]} {fidelity} E={labelled.get_potential_energy():.4f} eV", flush=True)

