"""Structure relaxation under a chosen calculator (fidelity).

Positions and, for fully periodic cells, the cell are relaxed with ASE optimizers through
`FrechetCellFilter`. The result is a detached copy whose convergence flag comes from the
final state, so a run that hit the step limit is reported as such.
"""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass

import numpy as np
from ase import Atoms
from ase.calculators.singlepoint import SinglePointCalculator
from ase.filters import FrechetCellFilter
from ase.io import write
from ase.optimize import BFGS, FIRE, LBFGS
from ase.units import GPa

OPTIMIZERS = {"FIRE": FIRE, "BFGS": BFGS, "LBFGS": LBFGS}


@dataclass
class RelaxResult:
    """Relaxed copy (with a SinglePointCalculator) and how the relaxation ended.

    `energy` is the potential energy (eV), `max_force` the largest atomic force (eV/Å),
    `max_stress_gpa` the largest component of stress + pressure, i.e. the residual the cell
    relaxation drives to zero (None when the cell is not periodic or has no stress).
    """

    atoms: Atoms
    energy: float
    max_force: float
    steps: int
    converged: bool
    max_stress_gpa: float | None


def _has_stress(atoms: Atoms, calculator) -> bool:
    return bool(atoms.pbc.all()) and "stress" in getattr(calculator, "implemented_properties", ())


def _snapshot(atoms: Atoms, with_stress: bool) -> Atoms:
    """Copy of `atoms` carrying its current energy, forces and (optionally) stress."""
    results = {"energy": atoms.get_potential_energy(), "forces": atoms.get_forces()}
    if with_stress:
        results["stress"] = atoms.get_stress()
    copy = atoms.copy()
    copy.calc = SinglePointCalculator(copy, **results)
    return copy


def relax(
    atoms: Atoms,
    calculator,
    fmax: float = 0.05,
    steps: int = 500,
    relax_cell: bool = True,
    optimizer: str = "FIRE",
    trajectory=None,
    pressure_gpa: float = 0.0,
) -> RelaxResult:
    """Relax positions (and the cell when `relax_cell` and fully periodic) to `fmax` eV/Å.

    `pressure_gpa` is the external scalar pressure for the cell relaxation; `trajectory`
    is an optional extxyz path receiving every step. The input atoms are not modified.
    """
    if optimizer not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer {optimizer!r}; known: {', '.join(OPTIMIZERS)}")
    work = atoms.copy()
    work.calc = calculator
    cell_moves = relax_cell and bool(work.pbc.all()) and work.cell.rank == 3
    if pressure_gpa and not cell_moves:
        raise ValueError("pressure_gpa needs a cell relaxation (relax_cell=True, fully periodic cell)")
    target = FrechetCellFilter(work, scalar_pressure=pressure_gpa * GPa) if cell_moves else work
    with_stress = _has_stress(work, calculator)

    opt = OPTIMIZERS[optimizer](target, logfile=None)
    with nullcontext() if trajectory is None else open(trajectory, "w") as handle:
        if handle is not None:
            opt.attach(lambda: write(handle, _snapshot(work, with_stress), format="extxyz"))
        optimizer_converged = bool(opt.run(fmax=fmax, steps=steps))

    final = _snapshot(work, with_stress)
    max_force = float(np.linalg.norm(final.get_forces(), axis=1).max())
    # The cell filter judges transformed forces; also demand the plain atomic ones meet fmax.
    converged = optimizer_converged and max_force <= fmax
    max_stress = None
    if with_stress:
        residual = final.get_stress(voigt=True) + pressure_gpa * GPa * np.array([1, 1, 1, 0, 0, 0])
        max_stress = float(np.abs(residual).max() / GPa)
    return RelaxResult(final, float(final.get_potential_energy()), max_force, opt.nsteps, converged, max_stress)
