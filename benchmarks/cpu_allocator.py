"""What glibc's allocator costs a CPU training step, and what one setting saves.

A training step on a liquid-water frame allocates and frees many tensors larger than 32 MB. glibc
serves each from a fresh mmap and unmaps it when freed (32 MB is the ceiling of its mmap
threshold), so the next step faults the memory in again, one 4 kB page at a time: the SevenNet
water runs in docs/results/pretrained spent as much CPU time in the kernel as in torch.
`GLIBC_TUNABLES=glibc.malloc.hugetlb=1` (glibc >= 2.35) makes malloc ask for transparent huge
pages, 2 MB per fault. It must be set before Python starts, so each setting runs in a process of
its own; this prints seconds per step, CPU seconds in the kernel and page faults per step.

    python benchmarks/cpu_allocator.py [--model sevenn:7net-mf-0] [--data FILE] [--start 1781]
        [--frames 1] [--repeats 3] [--out FILE.md]

Every process loads the model with the target fidelity added (all weights train: plain
fine-tuning) and times the same batch after one untimed step.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch
from torch_geometric.data import Batch

from fidelity_adapters.compare import machine
from fidelity_adapters.data import from_atoms, stream_frames
from fidelity_adapters.pretrained import entry, load_pretrained
from low_rank_cost import TARGET, WATER, training_step
from table_output import publish

HUGE_PAGES = "glibc.malloc.hugetlb=1"
DEFAULT = "glibc's default"
SETTINGS = {DEFAULT: None, f"GLIBC_TUNABLES={HUGE_PAGES}": HUGE_PAGES}
THP_MODE = Path("/sys/kernel/mm/transparent_hugepage/enabled")


def measure(args) -> dict:
    """Per-step wall seconds, kernel CPU seconds and minor page faults, in this process, and the
    forces predicted after the steps (no optimizer: the weights do not change)."""
    torch.set_num_threads(args.threads)
    base = entry(args.model).level(None, what="base fidelity")
    potential = load_pretrained(args.model, add=[TARGET], like=base)
    frames = [atoms for _, atoms in stream_frames(Path(args.data), every=1, limit=args.frames, start=args.start)]
    batch = Batch.from_data_list([potential.graph(from_atoms(a, TARGET)) for a in frames])
    step = training_step(potential, batch)
    step()
    before, start = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
    for _ in range(args.repeats):
        step()
    wall, after = time.perf_counter() - start, resource.getrusage(resource.RUSAGE_SELF)
    return {"atoms": sum(len(a) for a in frames), "wall": wall / args.repeats,
            "user": (after.ru_utime - before.ru_utime) / args.repeats,
            "system": (after.ru_stime - before.ru_stime) / args.repeats,
            "faults": (after.ru_minflt - before.ru_minflt) / args.repeats,
            "forces": potential(batch)["forces"].detach().double().flatten().tolist()}  # fmt: skip


def in_own_process(tunables: str | None, argv: list[str]) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "GLIBC_TUNABLES"} | ({"GLIBC_TUNABLES": tunables} if tunables else {})
    done = subprocess.run([sys.executable, __file__, "--measure", *argv], env=env, capture_output=True, text=True)
    if done.returncode:
        raise RuntimeError(f"the measuring process failed ({tunables or 'no GLIBC_TUNABLES'}):\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="sevenn:7net-mf-0", help="a pretrained name (fidelity-adapters pretrained)")
    parser.add_argument("--data", default=str(WATER))
    parser.add_argument("--start", type=int, default=1781, help="first frame (the SCAN set's 192-atom liquid frames start here)")
    parser.add_argument("--frames", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--measure", action="store_true", help="measure in this process, print one JSON line")
    parser.add_argument("--out")
    args, argv = parser.parse_args(), [a for a in sys.argv[1:] if a != "--measure"]
    if args.measure:
        print(json.dumps(measure(args)))
        return
    torch.set_num_threads(args.threads)  # only for machine() to report the children's threads
    rows = {label: in_own_process(tunables, argv) for label, tunables in SETTINGS.items()}
    modes = THP_MODE.read_text().split() if THP_MODE.exists() else ["[absent]"]
    thp = next((m.strip("[]") for m in modes if m.startswith("[")), " ".join(modes))  # the kernel marks the mode in use
    reference = rows[DEFAULT]
    lines = [
        f"One training step (forward, energy and force loss, backward) of {args.model} with {TARGET} added, all weights "
        f"training, on {args.frames} frame(s) of {Path(args.data).name} from frame {args.start} ({reference['atoms']} atoms); "
        f"{machine()}; {platform.libc_ver()[0]} {platform.libc_ver()[1]}, transparent huge pages: {thp}. Command: "
        f"`python benchmarks/cpu_allocator.py` with the options above ({args.repeats} timed steps per process).",
        "",
        "| allocator setting | s per step | vs default | user CPU s | kernel CPU s | minor page faults | max force difference from default (eV/A) |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for label, r in rows.items():
        difference = max(abs(a - b) for a, b in zip(r["forces"], reference["forces"]))
        lines.append(f"| {label} | {r['wall']:.2f} | {r['wall'] / reference['wall']:.2f}x | {r['user']:.2f} | {r['system']:.2f} "
                     f"| {r['faults']:,.0f} | {difference:.1e} |")  # fmt: skip
    publish(lines, args.out)


if __name__ == "__main__":
    main()
