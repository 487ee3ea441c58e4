"""Our numba neighbour list against the well-kept libraries a user could pick instead.

    python benchmarks/neighbour_lists.py [--repeats N] [--out FILE]

Times (i, j, shift) lists within 5 A, both directions, on the systems of m3gnet_vs_matgl.py:
ours (fidelity_adapters.neighbors.neighbor_list), vesin, matscipy and ASE, whichever are
installed (`pip install vesin matscipy`). Checks that every library finds the same pairs
before timing. Median of --repeats calls after one warm-up (m3gnet_vs_matgl.median_time); prints a markdown table.
"""

from __future__ import annotations

import argparse
import platform
from functools import partial
from importlib.metadata import version

import numpy as np
import torch
from m3gnet_vs_matgl import median_time, silicon, water_box

from fidelity_adapters.compare import cpu_model

CUTOFF = 5.0


def ours(atoms):
    from fidelity_adapters.neighbors import neighbor_list

    return neighbor_list(atoms.positions, atoms.cell.array, atoms.pbc, CUTOFF)


def vesin_list(atoms):
    from vesin import NeighborList

    return NeighborList(cutoff=CUTOFF, full_list=True).compute(atoms.positions, atoms.cell.array, bool(atoms.pbc.all()), "ijS")


def matscipy_list(atoms):
    from matscipy.neighbours import neighbour_list

    return neighbour_list("ijS", atoms, CUTOFF)


def ase_list(atoms):
    from ase.neighborlist import neighbor_list

    return neighbor_list("ijS", atoms, CUTOFF)


LIBRARIES = {"ours (numba)": ours, "vesin": vesin_list, "matscipy": matscipy_list, "ASE": ase_list}
DISTRIBUTIONS = {"vesin": "vesin", "matscipy": "matscipy", "ASE": "ase"}  # for the versions in the header


def available() -> dict:
    found = {}
    for name, fn in LIBRARIES.items():
        try:
            fn(silicon(8))
            found[name] = fn
        except ImportError:
            print(f"{name}: not installed, skipped")
    return found


def pairs(result) -> set:
    i, j, shifts = (np.asarray(x) for x in result)
    return set(zip(i.tolist(), j.tolist(), map(tuple, shifts.astype(int).tolist())))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--out", help="also write the table to this file")
    args = parser.parse_args()
    torch.set_num_threads(1)
    libraries = available()
    systems = [(f"Si {n}", silicon(n, seed=n)) for n in (64, 216, 1728)] + [("water 64 H2O", water_box())]
    versions = ", ".join(f"{DISTRIBUTIONS[name]} {version(DISTRIBUTIONS[name])}" for name in libraries if name in DISTRIBUTIONS)
    lines = [
        f"Machine: {cpu_model()}, Python {platform.python_version()}, {versions}; neighbour lists within {CUTOFF} A, "
        f"median of {args.repeats} calls, single thread.",
        "",
        "| system | atoms | pairs | " + " | ".join(libraries) + " |",
        "|---|---:|---:|" + "---:|" * len(libraries),
    ]
    for label, atoms in systems:
        reference = pairs(ours(atoms))
        for name, fn in libraries.items():
            if pairs(fn(atoms)) != reference:
                raise SystemExit(f"{name} finds other pairs than ours on {label}")
        times = [1000 * median_time(partial(fn, atoms), args.repeats, 1, "cpu") for fn in libraries.values()]
        lines.append(f"| {label} | {len(atoms)} | {len(reference):,} | " + " | ".join(f"{t:.2f} ms" for t in times) + " |")
    text = "\n".join(lines)
    print(text)
    if args.out:
        with open(args.out, "w") as handle:
            handle.write(text + "\n")


if __name__ == "__main__":
    main()
