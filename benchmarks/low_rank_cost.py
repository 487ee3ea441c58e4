"""What a fidelity's own low-rank update costs (Potential.add_low_rank_update, finetune's
trainable="lowrank-target"): seconds per evaluation (energy and forces) and per training step
(energy and force loss, backward through the forces) of one pretrained model

- without an update, every weight trainable (plain fine-tuning: the reference row);
- with the target's update, on a batch of the target's structures (only the update trains);
- with it, on a batch of base-level structures (the update is not applied there);
- with it, on a batch that mixes the two (run one fidelity at a time and put back together).

    python benchmarks/low_rank_cost.py [--model NAME] [--frames 2] [--rank 8] [--repeats 3] [--out FILE.md]

Every row evaluates the same frames (the first `--frames` of the shared SCAN liquid-water set,
one batch); times are per batch after one untimed call.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
from torch_geometric.data import Batch

from fidelity_adapters.compare import machine
from fidelity_adapters.data import from_atoms, stream_frames
from fidelity_adapters.pretrained import entry, load_pretrained
from table_output import publish

WATER = Path(__file__).resolve().parents[2] / "shared" / "data" / "water" / "scan_csiprinceton.extxyz.gz"
TARGET = "SCAN"


def seconds_per_call(call, repeats: int) -> float:
    call()
    start = time.perf_counter()
    for _ in range(repeats):
        call()
    return (time.perf_counter() - start) / repeats


def training_step(potential, batch: Batch):
    """A training step's forward and backward on `batch` (energy and force loss, no optimizer:
    its cost does not depend on what is measured here)."""
    trainable = [p for p in potential.parameters() if p.requires_grad]

    def step():
        out = potential(batch, training=True)
        loss = out["energy"].pow(2).sum() + out["forces"].pow(2).sum()
        for parameter in trainable:
            parameter.grad = None
        loss.backward()

    return step


def timings(potential, batch: Batch, repeats: int) -> tuple[float, float]:
    """(evaluation, training step) seconds for `batch`."""
    return seconds_per_call(lambda: potential(batch), repeats), seconds_per_call(training_step(potential, batch), repeats)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="matgl:M3GNet-MatPES-r2SCAN-v2025.1", help="a pretrained name (fidelity-adapters pretrained)")
    parser.add_argument("--data", default=str(WATER))
    parser.add_argument("--frames", type=int, default=2)
    parser.add_argument("--rank", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out")
    args = parser.parse_args()

    base = entry(args.model).level(None, what="base fidelity")
    potential = load_pretrained(args.model, add=[TARGET], like=base)
    frames = [atoms for _, atoms in stream_frames(Path(args.data), every=1, limit=args.frames)]

    def batch_at(fidelities):
        return Batch.from_data_list([potential.graph(from_atoms(a, f)) for a, f in zip(frames, fidelities)])

    at_target, at_base = batch_at([TARGET] * len(frames)), batch_at([base] * len(frames))
    mixed = batch_at([(TARGET, base)[k % 2] for k in range(len(frames))])
    rows = [(f"no update, all weights train (plain fine-tuning), {TARGET} batch", *timings(potential, at_target, args.repeats))]
    potential.requires_grad_(False)
    update = potential.add_low_rank_update(TARGET, args.rank).requires_grad_(True)
    with torch.no_grad():  # a trained update: nonzero, as after fine-tuning
        for name, parameter in update.named_parameters():
            if name.endswith(".b"):
                parameter.normal_(0.0, 1e-3)
    for label, batch in ((f"{TARGET} batch", at_target), (f"{base} batch (update not applied)", at_base),
                         (f"mixed batch ({TARGET} and {base} alternate)", mixed)):  # fmt: skip
        rows.append((f"{TARGET}'s own rank-{args.rank} update, only it trains, {label}", *timings(potential, batch, args.repeats)))

    atoms = sum(len(a) for a in frames)
    lines = [
        f"A fidelity's own low-rank update: {args.model} (base {base}) with {TARGET} added, one batch of {len(frames)} "
        f"frames ({atoms} atoms) of {Path(args.data).name}; {machine()}. Command: `python benchmarks/low_rank_cost.py` "
        f"with the options above ({args.repeats} repeats).",
        "",
        "| model, batch | s per evaluation (E, F) | vs reference | s per training step | vs reference |",
        "|---|---:|---:|---:|---:|",
    ]
    _, eval_ref, step_ref = rows[0]
    for label, evaluation, step in rows:
        lines.append(f"| {label} | {evaluation:.3f} | {evaluation / eval_ref:.2f}x | {step:.3f} | {step / step_ref:.2f}x |")
    publish(lines, args.out)


if __name__ == "__main__":
    main()
