"""Reduced precision against float64 (the reference): what float32, TF32 and bf16 do to a
model's energies, forces and stress, and to its speed.

    python benchmarks/precision.py [--model NAME_OR_FILE] [--fidelity F] [--data FILE.extxyz[.gz]]
                                   [--frames 2] [--device cpu|cuda] [--repeats 3] [--out docs/precision_table.md]

Each row evaluates the same frames (energy, forces, stress) with the model in one precision:
- float32: the network in float32 (the default of every command);
- tf32: float32 weights with TF32 matmuls (`--precision tf32`): real on an Ampere or newer
  GPU; on a CPU emulated (fidelity_adapters.precision.emulated_tf32 rounds each matmul's
  inputs as tensor cores do), so its errors are TF32's but its time is not;
- bf16 autocast: the network under torch.autocast(bfloat16), geometry and references as in
  float32 (not offered as an option: this row is why).
Errors are against the same model in float64; times are per frame after one untimed call.
The default model is M3GNet-MatPES-r2SCAN (../shared/pretrained) on the first frames of
the shared SCAN liquid-water set.
"""

from __future__ import annotations

import argparse
import time
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import torch
from torch_geometric.data import Batch

from fidelity_adapters.compare import machine
from fidelity_adapters.data import from_atoms, stream_frames
from fidelity_adapters.precision import emulated_tf32, matmul_precision
from md_engines import load
from table_output import publish

WATER = Path(__file__).resolve().parents[2] / "shared" / "data" / "water" / "scan_csiprinceton.extxyz.gz"


def modes(device: str) -> dict:
    """Each row: (network dtype, the context it runs in)."""

    def bf16_network(potential):
        run_backbone = potential.run_backbone

        def autocast_backbone(method, batch, edge_vectors):
            with torch.autocast(torch.device(device).type, dtype=torch.bfloat16):
                return run_backbone(method, batch, edge_vectors)

        potential.run_backbone = autocast_backbone
        return nullcontext()

    tf32 = (lambda p: matmul_precision("tf32", device)) if device.startswith("cuda") else (lambda p: emulated_tf32())
    return {
        "float64 (reference)": (torch.float64, lambda p: nullcontext()),
        "float32": (torch.float32, lambda p: nullcontext()),
        "tf32" + ("" if device.startswith("cuda") else " (emulated)"): (torch.float32, tf32),
        "bf16 autocast (network)": (torch.float32, bf16_network),
    }


def evaluate(potential, batches, repeats: int, device: str) -> tuple[list[dict], float]:
    def once():
        return [{k: v.detach().double().cpu() for k, v in potential(b, stress=True).items()} for b in batches]

    once()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(repeats):
        results = once()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return results, (time.perf_counter() - start) / repeats / len(batches)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="matgl:M3GNet-MatPES-r2SCAN-v2025.1", help="pretrained name or model file")
    parser.add_argument("--fidelity", help="default: the model's first")
    parser.add_argument("--data", default=str(WATER))
    parser.add_argument("--frames", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out")
    args = parser.parse_args()

    frames = [atoms for _, atoms in stream_frames(Path(args.data), every=1, limit=args.frames)]
    rows, reference, float32_time = [], None, None
    for name, (dtype, context) in modes(args.device).items():
        potential = load(args.model, dtype).to(args.device)
        fidelity = args.fidelity or potential.fidelities[0]
        batches = [Batch.from_data_list([potential.graph(from_atoms(a, fidelity))]) for a in frames]
        try:
            with context(potential):
                results, seconds = evaluate(potential, batches, args.repeats, args.device)
        except RuntimeError as error:  # e.g. bf16 autocast in a model whose ops mix dtypes (sevenn's e3nn code)
            rows.append((name, str(error).splitlines()[0]))
            continue
        if reference is None:
            reference = results
        float32_time = seconds if name == "float32" else float32_time
        forces = np.concatenate([(r["forces"] - ref["forces"]).abs().numpy().ravel() for r, ref in zip(results, reference)])
        energy = [abs(float(r["energy"][0] - ref["energy"][0])) / len(a) for r, ref, a in zip(results, reference, frames)]
        stress = max(float((r["stress"] - ref["stress"]).abs().max()) for r, ref in zip(results, reference))
        rows.append((name, 1e3 * forces.mean(), 1e3 * forces.max(), 1e3 * max(energy), 160.21766 * 1e3 * stress, seconds))
    scale = np.mean([np.abs(ref["forces"].numpy()).mean() for ref in reference])
    atoms = sum(len(a) for a in frames) / len(frames)
    lines = [
        f"Precision against float64: {args.model} at {fidelity}, {len(frames)} frames of {args.data.split('/')[-1]} "
        f"({atoms:.0f} atoms on average; mean |F| {1e3 * scale:.0f} meV/A), energy, forces and stress per call, "
        f"{machine(args.device)}. Command: `python benchmarks/precision.py` with the options above.",
        "",
        "| precision | F MAE (meV/A) | F max (meV/A) | E max (meV/atom) | stress max (MPa) | s per frame | vs float32 |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for name, *values in rows:
        if len(values) == 1:
            lines.append(f"| {name} | fails: {values[0]} | | | | | |")
            continue
        mae, largest, energy, stress, seconds = values
        emulated = "(emulated)" in name
        speed = "-" if emulated else f"{float32_time / seconds:.2f}x"
        lines.append(f"| {name} | {mae:.3f} | {largest:.2f} | {energy:.4f} | {stress:.3f} | {'-' if emulated else f'{seconds:.3f}'} | {speed} |")
    publish(lines, args.out)


if __name__ == "__main__":
    main()
