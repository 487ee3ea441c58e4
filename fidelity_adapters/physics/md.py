"""Molecular dynamics through ASE with any calculator, so a potential can be run at a chosen fidelity.

MD is where a potential's smoothness and stability show: an NVE run checks energy conservation
(drift and maximum deviation of the total energy), NVT/NPT runs give the trajectories for
structure analysis (RDF, angles, coordination). The integrators are ASE's own:

- ``nve``: velocity Verlet.
- ``nvt``: Langevin (``thermostat="langevin"``, friction ``friction_per_fs``; the centre of
  mass is left free, since ASE's ``fixcm=True`` samples NVT inexactly) or a Nose-Hoover chain
  (``"nose-hoover"``, ASE's ``NoseHooverChainNVT`` with damping time 1/friction).
- ``npt``: both sample the true isothermal-isobaric ensemble with isotropic cell scaling
  (Berendsen weak coupling would only fix the mean pressure, not the fluctuations):
  ``"langevin"`` uses ASE's ``LangevinBAOAB`` (BAOAB Langevin for atoms, Langevin-Hoover
  for the volume), ``"nose-hoover"`` uses ASE's ``IsotropicMTKNPT`` (Martyna-Tobias-Klein
  barostat with Nose-Hoover chains); the barostat time is ``barostat_time_fs``.
"""

from __future__ import annotations

import warnings
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

import numpy as np
from ase import Atoms, units
from ase.calculators.calculator import Calculator
from ase.calculators.singlepoint import SinglePointCalculator
from ase.io import write
from ase.md.langevin import Langevin
from ase.md.langevinbaoab import LangevinBAOAB
from ase.md.md import MolecularDynamics
from ase.md.nose_hoover_chain import IsotropicMTKNPT, NoseHooverChainNVT
from ase.md.velocitydistribution import Stationary, thermalize_momenta
from ase.md.verlet import VelocityVerlet
from tqdm import tqdm

ENSEMBLES = ("nve", "nvt", "npt")
THERMOSTATS = ("langevin", "nose-hoover")


@dataclass
class MDResult:
    """Observables recorded every `interval` steps (step 0 included); energies in eV/atom.

    The volume is NaN unless the cell is fully periodic; drift (meV/atom/ps, slope of a linear
    fit of the total energy) and maximum deviation from the start (meV/atom) are for NVE only.
    """

    trajectory: Path | None
    n_steps: int
    times_ps: np.ndarray
    total_energy_per_atom: np.ndarray
    potential_energy_per_atom: np.ndarray
    temperature_K: np.ndarray
    volume_per_atom: np.ndarray
    drift_mev_per_atom_per_ps: float | None
    max_deviation_mev_per_atom: float | None


def _integrator(
    atoms: Atoms,
    ensemble: str,
    thermostat: str,
    temperature_K: float,
    timestep_fs: float,
    friction_per_fs: float,
    pressure_gpa: float,
    barostat_time_fs: float,
    rng: np.random.Generator,
) -> MolecularDynamics:
    """The ASE integrator for an ensemble and thermostat (arguments already validated)."""
    dt = timestep_fs * units.fs
    tdamp = units.fs / friction_per_fs
    if ensemble == "nve":
        return VelocityVerlet(atoms, timestep=dt)
    if thermostat == "nose-hoover" and temperature_K <= 0:
        raise ValueError("a Nose-Hoover thermostat needs temperature_K > 0")
    if ensemble == "nvt":
        if thermostat == "langevin":
            return Langevin(
                atoms, dt, temperature_K=temperature_K, friction=friction_per_fs / units.fs, fixcm=False, rng=rng
            )
        return NoseHooverChainNVT(atoms, dt, temperature_K=temperature_K, tdamp=tdamp)
    pressure = pressure_gpa * units.GPa
    ptau = barostat_time_fs * units.fs
    if thermostat == "langevin":
        with warnings.catch_warnings():  # ASE reports its barostat-mass heuristic as a warning
            warnings.filterwarnings("ignore", message="Using heuristic P_mass")
            return LangevinBAOAB(
                atoms, dt, temperature_K=temperature_K, externalstress=-pressure, hydrostatic=True,
                T_tau=tdamp, P_tau=ptau, rng=rng,
            )
    return IsotropicMTKNPT(atoms, dt, temperature_K=temperature_K, pressure_au=pressure, tdamp=tdamp, pdamp=ptau)


def _write_frame(handle: TextIO, atoms: Atoms, step: int, time_ps: float) -> None:
    """Append one extxyz frame with energy, forces, step and time, and flush it to disk."""
    frame = atoms.copy()
    frame.calc = SinglePointCalculator(frame, energy=atoms.get_potential_energy(), forces=atoms.get_forces())
    frame.info.update(step=step, time_ps=time_ps)
    write(handle, frame, format="extxyz")
    handle.flush()


def run_md(
    atoms: Atoms,
    calculator: Calculator,
    ensemble: str = "nve",
    temperature_K: float = 300.0,
    timestep_fs: float = 1.0,
    steps: int = 1000,
    interval: int = 10,
    trajectory: str | Path | None = None,
    seed: int = 0,
    friction_per_fs: float = 0.01,
    thermostat: str = "langevin",
    pressure_gpa: float = 0.0,
    barostat_time_fs: float = 1000.0,
    progress: bool = True,
    initialize_velocities: bool = True,
) -> MDResult:
    """Run MD on a copy of `atoms` with `calculator`, recording every `interval` steps.

    Velocities are drawn from Maxwell-Boltzmann at `temperature_K` (seeded, zero total
    momentum) unless `initialize_velocities` is False or the temperature is 0, in which case
    the momenta carried by `atoms` are used. The thermostat damping time is
    1/`friction_per_fs`. A `trajectory` file (extxyz, overwritten) gets each recorded frame
    as soon as it is made, so an interrupted run leaves a readable file.
    """
    if ensemble not in ENSEMBLES:
        raise ValueError(f"unknown ensemble {ensemble!r}; known: {', '.join(ENSEMBLES)}")
    if thermostat not in THERMOSTATS:
        raise ValueError(f"unknown thermostat {thermostat!r}; known: {', '.join(THERMOSTATS)}")
    if steps < 0 or interval < 1 or timestep_fs <= 0 or friction_per_fs <= 0 or barostat_time_fs <= 0:
        raise ValueError("need steps >= 0, interval >= 1 and positive timestep, friction and barostat time")
    work = atoms.copy()
    if ensemble == "npt" and not work.pbc.all():
        raise ValueError("NPT needs a fully periodic cell")
    work.calc = calculator
    rng = np.random.default_rng(seed)
    if initialize_velocities and temperature_K > 0:
        thermalize_momenta(work, temperature_K, rng=rng)
        Stationary(work, preserve_temperature=False)
    dyn = _integrator(
        work, ensemble, thermostat, temperature_K, timestep_fs, friction_per_fs, pressure_gpa, barostat_time_fs, rng
    )

    n = len(work)
    records: list[tuple[float, float, float, float, float]] = []
    path = Path(trajectory) if trajectory is not None else None
    with (
        open(path, "w") if path is not None else nullcontext() as handle,
        tqdm(total=steps, disable=not progress, desc=f"MD {ensemble}", unit="step") as bar,
    ):
        for _ in dyn.irun(steps):
            if dyn.nsteps % interval == 0:
                time_ps = dyn.nsteps * timestep_fs / 1000.0
                potential = work.get_potential_energy()
                volume = work.cell.volume if work.pbc.all() else np.nan
                records.append((time_ps, potential + work.get_kinetic_energy(), potential,
                                work.get_temperature(), volume))
                if handle is not None:
                    _write_frame(handle, work, dyn.nsteps, time_ps)
            bar.update(dyn.nsteps - bar.n)

    times, total, potential, temperature, volume = (np.array(column) for column in zip(*records))
    drift = deviation = None
    if ensemble == "nve":
        deviation = 1000.0 * float(np.max(np.abs(total - total[0]))) / n
        if len(times) > 1:
            drift = 1000.0 * float(np.polyfit(times, total / n, 1)[0])
    return MDResult(
        trajectory=path,
        n_steps=steps,
        times_ps=times,
        total_energy_per_atom=total / n,
        potential_energy_per_atom=potential / n,
        temperature_K=temperature,
        volume_per_atom=volume / n,
        drift_mev_per_atom_per_ps=drift,
        max_deviation_mev_per_atom=deviation,
    )
