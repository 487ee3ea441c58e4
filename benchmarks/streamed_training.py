"""Peak memory and speed of training on 1e3 to 1e5 structures, streamed from on-disk shards
against held in memory (issue 17, item 2).

    python benchmarks/streamed_training.py [--sizes 1000 10000 100000] [--in-memory-up-to 10000]
                                           [--workers 0] [--out docs/streamed_training_table.md]

The structures are rattled copies of the bundled water clusters (about 9 atoms each), written
by `prepare`'s write_shards. Each run is one epoch of the README's default small M3GNet at
batch 16 in a fresh process (its peak resident memory is the process's maxrss), after the
start-up passes over the data (fidelities, references); a thread samples the process's
anonymous and file-backed resident memory (the shards' pages, which LMDB maps and the kernel
may drop at any time, count as file-backed). An untimed warm-up run fills numba's cache first.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from table_output import publish


CHILD = r"""
import json, resource, sys, threading, time
import torch
peak = {"RssAnon": 0, "RssFile": 0}
def sample():  # the largest anonymous and file-backed resident memory seen (kB), every 0.2 s
    while True:
        for line in open("/proc/self/status"):
            key, _, value = line.partition(":")
            if key in peak:
                peak[key] = max(peak[key], int(value.split()[0]))
        time.sleep(0.2)
threading.Thread(target=sample, daemon=True).start()
torch.set_num_threads(1)
from fidelity_adapters.recipes import m3gnet_potential
from fidelity_adapters.shards import ShardedStructures
from fidelity_adapters.training import TrainConfig, train
path, mode, workers = sys.argv[1], sys.argv[2], int(sys.argv[3])
start = time.perf_counter()
stored = ShardedStructures(path)
n = len(stored)
n_val = max(1, n // 20)
train_set, val_set = stored.subset(range(n_val, n)), stored.subset(range(n_val))
if mode == "memory":
    train_set, val_set = list(train_set), list(val_set)
potential = m3gnet_potential([1, 8], ["PBE", "r2SCAN", "SCAN"], seed=0)
config = TrainConfig(max_epochs=1, batch_size=16, progress=False, workers=workers if mode == "shards" else 0)
result = train(potential, train_set, val_set, config)
print(json.dumps({"seconds": time.perf_counter() - start, "maxrss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  "anon_mb": peak["RssAnon"] / 1024, "file_mb": peak["RssFile"] / 1024,
                  "n_train": len(train_set), "loss": result.history[-1]["loss"]}))
"""


def run_child(path: Path, mode: str, workers: int) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-c", CHILD, str(path), mode, str(workers)], capture_output=True, text=True, env=env)
    if done.returncode:
        raise RuntimeError(done.stderr[-2000:])
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(argv=None) -> None:
    from fidelity_adapters.bundled import rattled_water_clusters
    from fidelity_adapters.compare import cpu_model
    from fidelity_adapters.shards import write_shards

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 10000, 100000])
    parser.add_argument("--in-memory-up-to", type=int, default=10000, help="largest size also trained in memory")
    parser.add_argument("--workers", type=int, default=0, help="DataLoader workers of the streamed runs")
    parser.add_argument("--out", help="write the table to this markdown file as well")
    args = parser.parse_args(argv)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        write_shards(rattled_water_clusters(100), Path(tmp) / "warm-up")
        run_child(Path(tmp) / "warm-up", "shards", 0)  # untimed: numba compiles into its cache once
        for n in args.sizes:
            path = Path(tmp) / f"n{n}"
            start = time.perf_counter()
            write_shards(rattled_water_clusters(n), path, shard_size=10000)
            prepared = time.perf_counter() - start
            modes = ["shards"] + (["memory"] if n <= args.in_memory_up_to else [])
            for mode in modes:
                result = run_child(path, mode, args.workers)
                rows.append((n, mode, prepared, result))
                print(n, mode, json.dumps(result), flush=True)
    lines = [
        f"One epoch of the default M3GNet (batch 16, 1 torch thread, {args.workers} DataLoader workers for shards) on rattled "
        f"water clusters (9 atoms on average), 5 % validation; {os.cpu_count()} cores ({cpu_model()}), "
        f"{time.strftime('%Y-%m-%d')}. Command: `python benchmarks/streamed_training.py "
        f"--sizes {' '.join(map(str, args.sizes))} --in-memory-up-to {args.in_memory_up_to}`.",
        "",
        "| structures | data | prepare (s) | peak resident memory (MB) | of it, peak anonymous / file-backed (MB) "
        "| run: start-up passes + 1 epoch (s) | training structures/s (incl. start-up) |",
        "|---:|---|---:|---:|---:|---:|---:|",
    ]
    for n, mode, prepared, r in rows:
        where = "on-disk shards, streamed" if mode == "shards" else "in memory (graphs built up front)"
        lines.append(f"| {n} | {where} | {prepared:.1f} | {r['maxrss_mb']:.0f} | {r['anon_mb']:.0f} / {r['file_mb']:.0f} "
                     f"| {r['seconds']:.1f} | {r['n_train'] / r['seconds']:.0f} |")  # fmt: skip
    publish(lines, args.out)


if __name__ == "__main__":
    main()
