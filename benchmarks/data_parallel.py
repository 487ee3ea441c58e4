"""Training throughput on one machine: one process against two torchrun processes (issue 17).

    python benchmarks/data_parallel.py [--structures 2000] [--epochs 2] [--out docs/data_parallel_table.md]

Rattled bundled water clusters (about 9 atoms each) are prepared as shards once; each row runs
`fidelity-adapters train` on them (the default M3GNet, batch 16, 10 % validation) in fresh
processes and reports training structures per second over the whole command, start-up included,
and the last validation loss (the runs take the same global batches, so it should agree).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from table_output import publish

CONFIGURATIONS = [  # name, processes, torch threads per process
    ("1 process, 1 thread", 1, 1),
    ("1 process, 2 threads", 1, 2),
    ("2 processes (torchrun, gloo), 1 thread each", 2, 1),
]


def run(data: Path, out: Path, processes: int, threads: int, epochs: int) -> tuple[float, float]:
    command = [sys.executable, "-m", "fidelity_adapters.cli", "train", str(data), "--out", str(out), "--epochs", str(epochs),
               "--threads", str(threads), "--batch-size", "16"]  # fmt: skip
    if processes > 1:
        runner = shutil.which("torchrun") or str(Path(sys.executable).parent / "torchrun")
        command = [runner, "--standalone", f"--nproc_per_node={processes}", "-m", *command[2:]]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    start = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, env=env)
    seconds = time.perf_counter() - start
    if done.returncode:
        raise RuntimeError(f"{' '.join(command)} failed:\n{done.stderr[-3000:]}")
    history = torch.load(out / "checkpoint.pt", weights_only=True)["history"]
    return seconds, json.loads(history)[-1]["loss"]


def main(argv=None) -> None:
    from fidelity_adapters.bundled import rattled_water_clusters
    from fidelity_adapters.compare import cpu_model
    from fidelity_adapters.shards import write_shards

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--structures", type=int, default=2000)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--out", help="write the table to this markdown file as well")
    args = parser.parse_args(argv)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        data = write_shards(rattled_water_clusters(args.structures), Path(tmp) / "data")
        n_train = round(0.9 * args.structures)
        for k, (name, processes, threads) in enumerate(CONFIGURATIONS):
            seconds, loss = run(data, Path(tmp) / f"run{k}", processes, threads, args.epochs)
            rows.append((name, seconds, args.epochs * n_train / seconds, loss))
            print(rows[-1], flush=True)
    lines = [
        f"`fidelity-adapters train` on {args.structures} rattled water clusters (shards), {args.epochs} epochs, batch 16, "
        f"{os.cpu_count()} cores ({cpu_model()}), {time.strftime('%Y-%m-%d')}. "
        f"Command: `python benchmarks/data_parallel.py --structures {args.structures} --epochs {args.epochs}`.",
        "",
        "| run | wall time (s) | training structures/s | vs 1 process, 1 thread | last validation loss |",
        "|---|---:|---:|---:|---:|",
    ]
    for name, seconds, rate, loss in rows:
        lines.append(f"| {name} | {seconds:.1f} | {rate:.0f} | {rate / rows[0][2]:.2f}x | {loss:.6g} |")
    publish(lines, args.out)


if __name__ == "__main__":
    main()
