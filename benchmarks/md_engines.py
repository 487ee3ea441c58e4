"""MD engines against the ASE calculator (the reference), one potential at one named fidelity.

    pip install -e '.[lammps,torchsim]'
    python benchmarks/md_engines.py [--model NAME_OR_FILE] [--fidelity F] [--molecules 64]
                                    [--nve-ps 5] [--nve-system water|si216] [--nve-timestep 0.5] [--steps 50]
                                    [--systems 1 4 16 64] [--parts steps nve torchsim] [--out docs/engines_table.md]

1. LAMMPS, through fix external (Python callback) and through the compiled pair style
   fidelity/aoti (an AOTInductor export, no Python in the loop), and ASE velocity Verlet on the
   same liquid-water box: MD steps per second over --steps steps each, after one untimed step.
2. Energy conservation in LAMMPS with the compiled pair style: an NVE run of --nve-ps
   picoseconds (steps of --nve-timestep fs, 0.5 for water) from 300 K of the water box or of
   216 Si atoms (diamond, 3x3x3 cubic cells), drift of the total energy (linear fit,
   meV/atom/ps) and its largest excursion.
3. TorchSim's batched NVE (grouped on a CPU, its default, and the whole batch per call)
   against ASE run one system after another: systems x steps per second for 1 to 64 copies of
   a small water box (rattled differently), 10 steps each.

The default model is M3GNet-MatPES-r2SCAN (../shared/pretrained) at its r2SCAN fidelity; any
model file of ours (and its fidelity) can be given instead.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from ase import Atoms, units
from ase.build import bulk, molecule
from ase.md.velocitydistribution import Stationary, thermalize_momenta
from ase.md.verlet import VelocityVerlet

from fidelity_adapters.calculator import FidelityCalculator
from fidelity_adapters.compare import cpu_model


def load(model: str, dtype: torch.dtype | None = None):
    """A model file of ours or a pretrained name; in `dtype` if given (default: as saved, or
    the pretrained model's float32)."""
    if os.path.exists(model):
        from fidelity_adapters.serialization import load_potential

        potential = load_potential(model)
        return potential if dtype is None else potential.to(dtype)
    from fidelity_adapters.pretrained import load_pretrained

    return load_pretrained(model) if dtype is None else load_pretrained(model, dtype=dtype)


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


def lammps_with_velocities(atoms: Atoms, potential, fidelity: str, compiled: tuple | None = None, timestep_fs: float = 0.5):
    """A LAMMPS instance holding `atoms` with their ASE velocities (A/fs -> A/ps), the potential
    installed through fix external, or with compiled = (plugin, package) as the compiled pair
    style; returns (lmp, a function running LAMMPS commands)."""
    from fidelity_adapters.engines.lammps import LammpsDriver, lammps_with_atoms
    from fidelity_adapters.engines.lammps_plugin import install_pair_style

    lmp, elements, prism = lammps_with_atoms(atoms)
    if compiled is None:
        run = LammpsDriver(lmp, potential, fidelity, elements).run
    else:
        install_pair_style(lmp, *compiled, fidelity, elements)
        run = lambda *commands: lmp.commands_list(list(commands))  # noqa: E731
    velocities = prism.vector_to_lammps(atoms.get_velocities()) * 1000 * units.fs  # ASE units -> A/ps
    order = np.argsort(lmp.numpy.extract_atom("id")[: len(atoms)])
    lmp.numpy.extract_atom("v")[: len(atoms)][order] = velocities
    run(f"timestep {timestep_fs / 1000!r}", "fix integrate all nve", "thermo_style custom step pe ke etotal", "run 0")
    return lmp, run


def steps_per_second_lammps(atoms, potential, fidelity, steps, compiled=None) -> float:
    _, run = lammps_with_velocities(atoms, potential, fidelity, compiled)
    run("run 1")
    start = time.perf_counter()
    run(f"run {steps}")
    return steps / (time.perf_counter() - start)


def compile_for_lammps(potential, fidelity: str, folder: Path) -> tuple:
    """(plugin library, AOTInductor package of the potential at fidelity) in folder."""
    from fidelity_adapters.engines.lammps_plugin import build_plugin
    from fidelity_adapters.export import export_potential

    package = folder / "model.pt2"
    export_potential(potential, fidelity, package, format="aotinductor")
    return build_plugin(folder), package


def steps_per_second_ase(atoms, potential, fidelity, steps) -> float:
    atoms = atoms.copy()
    atoms.calc = FidelityCalculator(potential, fidelity)
    dynamics = VelocityVerlet(atoms, timestep=0.5 * units.fs)
    dynamics.run(1)
    start = time.perf_counter()
    dynamics.run(steps)
    return steps / (time.perf_counter() - start)


def lammps_nve_drift(atoms, potential, fidelity, picoseconds: float, compiled: tuple, timestep_fs: float) -> tuple[float, float, int]:
    """(drift meV/atom/ps, largest |E - E0| meV/atom, steps) of a LAMMPS NVE run."""
    lmp, run = lammps_with_velocities(atoms, potential, fidelity, compiled, timestep_fs)
    steps = round(picoseconds * 1000 / timestep_fs)
    every = max(1, steps // 200)
    times, energies = [], []
    for done in range(0, steps + 1, every):
        if done:
            run(f"run {every}")
        times.append(done * timestep_fs / 1000)
        energies.append(lmp.get_thermo("etotal"))
    energies = (np.array(energies) - energies[0]) * 1000 / len(atoms)
    slope = np.polyfit(times, energies, 1)[0]
    return float(slope), float(np.abs(energies).max()), steps


def torchsim_systems_per_second(systems, potential, fidelity, steps: int = 10, **options) -> float:
    import torch_sim as ts

    from fidelity_adapters.engines.torchsim import TorchSimModel

    model = TorchSimModel(potential, fidelity, compute_stress=False, **options)
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
    parser.add_argument("--nve-system", choices=["water", "si216"], default="water", help="the water box, or 216 Si atoms")
    parser.add_argument("--nve-timestep", type=float, default=0.5, help="fs (0.5 for water's hydrogens; Si takes 1)")
    parser.add_argument("--systems", type=int, nargs="+", default=[1, 4, 16, 64])
    parser.add_argument("--small-molecules", type=int, default=8, help="water molecules per TorchSim system")
    parser.add_argument("--float64", action="store_true", help="run the model in float64 (a float32 model's rounding shows as NVE drift)")
    parser.add_argument("--parts", nargs="+", choices=["steps", "nve", "torchsim"], default=["steps", "nve", "torchsim"],
                        help="which of the three measurements to run")
    parser.add_argument("--out", help="also write the tables to this markdown file")
    args = parser.parse_args()

    potential = load(args.model)
    if args.float64:
        potential = potential.double()
    box = with_velocities(water_box(args.molecules))
    lines = [
        f"Machine: {os.cpu_count()} cores ({cpu_model()}), torch {torch.__version__}, {torch.get_num_threads()} torch threads, "
        f"device {potential.device}; model {args.model} at {args.fidelity} ({potential.dtype}).",
    ]
    compiled = None
    if "steps" in args.parts or "nve" in args.parts:
        start = time.perf_counter()
        compiled = compile_for_lammps(potential, args.fidelity, Path(tempfile.mkdtemp(prefix="md_engines_")))
        lines.append(f"Exporting with --format aotinductor and building the plugin took {time.perf_counter() - start:.0f} s.")
    if "steps" in args.parts:
        lines += steps_table(box, potential, args.fidelity, args.steps, compiled)
    if "nve" in args.parts:
        system = box if args.nve_system == "water" else with_velocities(bulk("Si", "diamond", a=5.43, cubic=True).repeat(3))
        lines += nve_block(system, potential, args.fidelity, args.nve_ps, compiled, args.nve_timestep)
    if "torchsim" in args.parts:
        lines += torchsim_table(water_box(args.small_molecules), args.systems, potential, args.fidelity)
    if args.out:
        with open(args.out, "w") as handle:
            handle.write("\n".join(lines) + "\n")
        print(f"written to {args.out}")


def steps_table(box, potential, fidelity, steps, compiled) -> list[str]:
    lines = [
        "",
        f"## MD steps per second, {len(box)}-atom water box (NVE, 0.5 fs, {steps} steps)",
        "",
        "| engine | steps/s | vs ASE |",
        "|---|---:|---:|",
    ]
    ase_rate = steps_per_second_ase(box, potential, fidelity, steps)
    rates = {
        "LAMMPS fix external (Python callback)": steps_per_second_lammps(box, potential, fidelity, steps),
        "LAMMPS pair_style fidelity/aoti (compiled)": steps_per_second_lammps(box, potential, fidelity, steps, compiled),
    }
    lines.append(f"| ASE VelocityVerlet (reference) | {ase_rate:.2f} | 1.00x |")
    lines += [f"| {name} | {rate:.2f} | {rate / ase_rate:.2f}x |" for name, rate in rates.items()]
    print("\n".join(lines), flush=True)
    return lines


def nve_block(system, potential, fidelity, picoseconds, compiled, timestep_fs) -> list[str]:
    drift, excursion, steps = lammps_nve_drift(system, potential, fidelity, picoseconds, compiled, timestep_fs)
    lines = [
        "",
        f"## LAMMPS NVE energy conservation (compiled pair style): {system.get_chemical_formula()}, {len(system)} atoms, "
        f"{picoseconds:g} ps ({steps} steps of {timestep_fs:g} fs) from 300 K",
        "",
        f"drift {drift:.2g} meV/atom/ps, largest |E(t) - E(0)| {excursion:.4f} meV/atom",
    ]
    print("\n".join(lines), flush=True)
    return lines


def torchsim_table(small, counts, potential, fidelity) -> list[str]:
    lines = [
        "",
        f"## Batched MD: TorchSim NVE vs ASE one system after another ({len(small)}-atom water boxes, 10 steps), systems x steps / s",
        "",
        "| systems | TorchSim (CPU default: groups of <= 64 atoms) | TorchSim, whole batch per call | ASE | TorchSim default vs ASE |",
        "|---:|---:|---:|---:|---:|",
    ]
    for n in counts:
        systems = [with_velocities(small, seed=k) for k in range(n)]
        for k, atoms in enumerate(systems):
            atoms.rattle(0.02, seed=k)
        grouped = torchsim_systems_per_second(systems, potential, fidelity)
        whole = torchsim_systems_per_second(systems, potential, fidelity, max_atoms_per_call=None)
        serial = ase_systems_per_second(systems, potential, fidelity)
        lines.append(f"| {n} | {grouped:.2f} | {whole:.2f} | {serial:.2f} | {grouped / serial:.2f}x |")
        print(lines[-1], flush=True)
    return lines


if __name__ == "__main__":
    main()
