"""Our import of matgl's M3GNet weights against matgl 2.0.4 itself, structure by structure.

matgl 2.0.4 needs an environment of its own (shared/pretrained/README.md); give its python:

    python -m fidelity_adapters.pretrained.matgl_check REF_PYTHON [--out docs/pretrained_matgl_check.md]

prints (and writes) a table of energy, force and stress differences for both MatPES models,
in float32 and float64, against stock matgl and against matgl with its neighbour pairs
ordered three-body-first (reference_matgl.py says why that is the faithful comparison).
tests/test_pretrained.py runs the same check when $FA_MATGL_REFERENCE_PYTHON is set.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
from pathlib import Path

import ase.io
import numpy as np
import torch
from ase import Atoms
from ase.build import bulk, molecule

from ..calculator import FidelityCalculator
from . import entry, load_pretrained

REFERENCE_SCRIPT = Path(__file__).with_name("reference_matgl.py")
MODELS = ("matgl:M3GNet-MatPES-PBE-v2025.1", "matgl:M3GNet-MatPES-r2SCAN-v2025.1")


def reference_structures() -> dict[str, Atoms]:
    """Si, water and oxides; periodic ones rattled, one triclinic."""
    silicon = bulk("Si", "diamond", a=5.43, cubic=True)
    silicon.rattle(0.05, seed=1)
    water = molecule("H2O")
    water.center(vacuum=6.0)
    water_box = Atoms("H16O8", positions=np.random.default_rng(3).uniform(0, 6.2, (24, 3)), cell=[6.2] * 3, pbc=True)
    water_box = _spread(water_box, 1.6)
    magnesia = bulk("MgO", "rocksalt", a=4.21).repeat((2, 2, 2))
    magnesia.rattle(0.05, seed=2)
    rutile = _rutile()
    rutile.set_cell(rutile.cell.array @ np.array([[1.0, 0.04, -0.03], [0.02, 1.0, 0.05], [-0.04, 0.03, 1.0]]), scale_atoms=True)
    rutile.rattle(0.04, seed=4)
    return {"Si diamond, 8 atoms": silicon, "H2O molecule": water, "water box, 24 atoms": water_box,
            "MgO rocksalt, 16 atoms": magnesia, "TiO2 rutile, triclinic strain": rutile}  # fmt: skip


def _rutile() -> Atoms:
    a, c, u = 4.594, 2.959, 0.305
    fractional = [[0, 0, 0], [0.5, 0.5, 0.5], [u, u, 0], [-u, -u, 0], [0.5 + u, 0.5 - u, 0.5], [0.5 - u, 0.5 + u, 0.5]]
    return Atoms("Ti2O4", scaled_positions=fractional, cell=[a, a, c], pbc=True).repeat((1, 1, 2))


def _spread(atoms: Atoms, minimum: float) -> Atoms:
    """Push random atoms apart until no two are closer than `minimum` (a plausible disordered box)."""
    for _ in range(200):
        d = atoms.get_all_distances(mic=True)
        np.fill_diagonal(d, np.inf)
        i, j = np.unravel_index(np.argmin(d), d.shape)
        if d[i, j] >= minimum:
            break
        atoms.positions[i] -= 0.3 * atoms.get_distance(i, j, mic=True, vector=True) / d[i, j]
    return atoms


def matgl_predictions(python: str, name: str, structures: dict[str, Atoms], float64: bool, three_body_first: bool) -> dict:
    folder, why = entry(name).locate()
    if folder is None:
        raise FileNotFoundError(why)
    with tempfile.TemporaryDirectory() as tmp:
        ase.io.write(f"{tmp}/in.extxyz", list(structures.values()))
        command = [python, str(REFERENCE_SCRIPT), str(folder), f"{tmp}/in.extxyz", f"{tmp}/out.json"]
        command += ["--float64"] * float64 + ["--three-body-first"] * three_body_first
        env = {**os.environ, "MATGL_BACKEND": "DGL", "DGLBACKEND": "pytorch", "OMP_NUM_THREADS": "1"}
        run = subprocess.run(command, capture_output=True, text=True, env=env, cwd=tmp)
        if run.returncode != 0:
            raise RuntimeError(f"matgl reference failed ({' '.join(command)}):\n{run.stderr[-2000:]}")
        return json.loads(Path(f"{tmp}/out.json").read_text())


def differences(name: str, structures: dict[str, Atoms], reference: dict, dtype: torch.dtype) -> list[dict]:
    """Per structure: |dE| per atom (eV), max |dF| (eV/A), max |dS| (eV/A^3) of ours vs reference."""
    potential = load_pretrained(name, dtype=dtype)
    fidelity = entry(name).fidelities[0]
    rows = []
    for (label, atoms), theirs in zip(structures.items(), reference["results"]):
        atoms = atoms.copy()
        atoms.calc = FidelityCalculator(potential, fidelity)
        row = {
            "structure": label,
            "energy_per_atom": abs(atoms.get_potential_energy() - theirs["energy"]) / len(atoms),
            "force": float(np.abs(atoms.get_forces() - np.array(theirs["forces"])).max()),
            "stress": None,
        }
        if theirs["stress"] is not None:
            row["stress"] = float(np.abs(atoms.get_stress(voigt=False) - np.array(theirs["stress"])).max())
        rows.append(row)
    return rows


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("python", help="python of the matgl 2.0.4 reference environment")
    parser.add_argument("--out", help="also write the table to this markdown file")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    structures = reference_structures()
    lines = [
        "| model | precision | matgl neighbour order | structure | dE (eV/atom) | max dF (eV/A) | max dS (eV/A^3) |",
        "|---|---|---|---|---|---|---|",
    ]
    versions = None
    for name in MODELS:
        for float64 in (False, True):
            for ordered in (True, False):
                reference = matgl_predictions(args.python, name, structures, float64, ordered)
                versions = f"matgl {reference['matgl']}, torch {reference['torch']}"
                dtype = torch.float64 if float64 else torch.float32
                for row in differences(name, structures, reference, dtype):
                    stress = "-" if row["stress"] is None else f"{row['stress']:.1e}"
                    order = "three-body first" if ordered else "stock"
                    lines.append(
                        f"| {name.split(':')[1]} | {'float64' if float64 else 'float32'} | {order} | {row['structure']} "
                        f"| {row['energy_per_atom']:.1e} | {row['force']:.1e} | {stress} |"
                    )
    header = (
        f"Ours (torch {torch.__version__}) against {versions}, one thread, {platform.processor() or platform.machine()}, "
        f"python {sys.version.split()[0]}. Command: `python -m fidelity_adapters.pretrained.matgl_check REF_PYTHON`.\n"
    )
    text = header + "\n" + "\n".join(lines) + "\n"
    print(text)
    if args.out:
        Path(args.out).write_text(text)


if __name__ == "__main__":
    main()
