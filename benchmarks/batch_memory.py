"""Peak memory and time of training batches capped by atoms (TrainConfig.max_atoms) against
batches capped only by count, on liquid-water frames of 864 atoms.

    python benchmarks/batch_memory.py [--data ../shared/data/water/scan_csiprinceton.extxyz.gz]
                                      [--frames 5] [--max-atoms 864 1728 none] [--out table.md]

The first `frames` frames of the shared SCAN set (one for validation, the rest for training)
train for one epoch of the `train` command's default M3GNet at batch 16, each setting in a
fresh process, so its peak resident memory (maxrss) is its own. `none` is the default: all
training frames in one batch.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import torch

from fidelity_adapters.compare import cpu_model
from table_output import publish

CHILD = r"""
import json, resource, sys, time
import torch
torch.set_num_threads(int(sys.argv[4]))
from fidelity_adapters import read_structures
from fidelity_adapters.recipes import m3gnet_potential
from fidelity_adapters.training import TrainConfig, train
path, frames, max_atoms = sys.argv[1], int(sys.argv[2]), None if sys.argv[3] == "none" else int(sys.argv[3])
structures = read_structures(path, fidelity="SCAN", limit=frames)
potential = m3gnet_potential([1, 8], ["SCAN"], seed=0)
start = time.perf_counter()
result = train(potential, structures[1:], structures[:1], TrainConfig(max_epochs=1, batch_size=16, max_atoms=max_atoms, progress=False))
print(json.dumps({"seconds": time.perf_counter() - start, "maxrss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  "steps": result.optimizer_steps, "atoms": [len(s) for s in structures[1:]]}))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=str(Path(__file__).resolve().parents[2] / "shared/data/water/scan_csiprinceton.extxyz.gz"))
    parser.add_argument("--frames", type=int, default=5)
    parser.add_argument("--max-atoms", nargs="+", default=["864", "1728", "none"])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out")
    args = parser.parse_args()
    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": f"{root}{os.pathsep}{os.environ.get('PYTHONPATH', '')}", "OMP_NUM_THREADS": str(args.threads)}
    rows, sizes = [], set()
    for limit in args.max_atoms:
        run = subprocess.run([sys.executable, "-c", CHILD, args.data, str(args.frames), limit, str(args.threads)],
                             env=env, capture_output=True, text=True)  # fmt: skip
        if run.returncode != 0:
            rows.append(f"| {limit} | failed (exit {run.returncode}: {run.stderr.strip().splitlines()[-1:]}) | | |")
            continue
        result = json.loads(run.stdout.strip().splitlines()[-1])
        sizes.update(result["atoms"])
        rows.append(f"| {limit} | {result['steps']} | {result['maxrss_mb'] / 1024:.2f} | {result['seconds']:.1f} |")
    atoms = "/".join(str(n) for n in sorted(sizes)) or "?"
    lines = [
        f"One training epoch, {args.frames - 1} frames of {atoms} atoms ({Path(args.data).name}), default M3GNet, batch 16; "
        f"{os.cpu_count()} cores ({cpu_model()}), torch {torch.__version__}, {args.threads} threads.",
        "",
        "| max_atoms | optimizer steps | peak memory (GiB) | seconds |",
        "|---|---:|---:|---:|",
        *rows,
    ]
    publish(lines, args.out)


if __name__ == "__main__":
    main()
