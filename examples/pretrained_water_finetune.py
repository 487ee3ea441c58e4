"""Pretrained potentials adapted to liquid water at a new level of theory with a few labelled
frames (issue 13, item 5, CPU-sized slices): zero-shot foundation models against the same
models fine-tuned with and without replay, on the same split.

    python examples/pretrained_water_finetune.py [--data ../shared/data/water/dcr2scan_paesani.extxyz.gz]
        [--out docs/results/pretrained/water_dcr2scan] [--train-frames 2] [--epochs 8] [--seed 0]
    python examples/pretrained_water_finetune.py --data ../shared/data/water/scan_csiprinceton.extxyz.gz \
        --target SCAN --start 1781 --every 1 --test-frames 20 --val-frames 2 --train-frames 6 \
        --runs sevenn-zero-shot sevenn-adapter sevenn-transfer --lr 1e-3 --epochs 10 [--rank 8] --out ...
    python examples/pretrained_water_finetune.py ... --runs scratch-mfi \
        --low-data ../shared/data/water/rpbe_d3_cheng.extxyz.gz --low-every 3 --scratch-epochs 20 --out ...

Frames: `--start`, then every `--every`-th frame of the file (default: every 72nd of the shared
DC-r2SCAN set, 31 frames of 768 atoms, 198-368 K); a seeded permutation gives the test frames,
the validation frames and the first `train_frames` training frames. Zero-shot energies are
compared after a per-element offset fitted on the training frames (the codes' energy zeros
differ); fine-tuned models get the same correction inside finetune(). Every fine-tuning run has
the same epochs, learning rate and batch size; its optimizer steps are in the table (replay
doubles the steps per epoch). Delta runs keep the foundation model frozen (offset fitted) and
train the recipe's M3GNet from scratch on the differences (`--scratch-epochs`, `--scratch-lr`).
Each training run shows its epochs on stderr (train and validation loss, best epoch) while it
runs; the results go to `--out` at the end. With `--checkpoints DIR` each training run keeps its
checkpoint in DIR/<run> after every epoch, and the same command resumes a killed run there (other
settings or frames are refused, not mixed in); the report's "training (s)" sums the epochs over
every resume, where "time (s)" is this process's whole run.
`scratch-mfi` is our model without a foundation: the recipe's multi-fidelity M3GNet from random
weights on the `--low-data` frames (a lower level of theory, other structures) and the same
training frames, validated and tested at the target on the same split (Ko & Ong's mfi).
`--device cuda` runs and trains every model on the GPU (`bash benchmarks/gpu_checks.sh water
OPTION...` on a lent machine: a SevenNet-MF-0 run on 768-atom frames in seconds, not an hour;
zero-shot and fine-tuning runs have run there, Delta and scratch-mfi not yet).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from fidelity_adapters import read_structures
from fidelity_adapters.compare import machine
from fidelity_adapters.data import fidelities_of
from fidelity_adapters.devices import parse_device
from fidelity_adapters.evaluation import error_metrics, errors, parity_arrays
from fidelity_adapters.finetune import FinetuneConfig, finetune
from fidelity_adapters.pretrained import entry
from fidelity_adapters.recipes import m3gnet_potential
from fidelity_adapters.strategies.delta import DELTA
from fidelity_adapters.strategies.pretrained import foundation_delta, foundation_with_offset
from fidelity_adapters.training import TrainConfig, train as train_potential

MATPES_R2SCAN, MATPES_PBE, SEVENN_MF0 = "matgl:M3GNet-MatPES-r2SCAN-v2025.1", "matgl:M3GNet-MatPES-PBE-v2025.1", "sevenn:7net-mf-0"
RUNS = {  # key: label, pretrained, base, finetune settings (None: zero-shot, "delta": Delta on the frozen model)
    "matpes-r2scan-zero-shot": ("zero-shot", MATPES_R2SCAN, "r2SCAN", None),
    "matpes-pbe-zero-shot": ("zero-shot", MATPES_PBE, "PBE", None),
    "sevenn-zero-shot": ("zero-shot", SEVENN_MF0, "r2SCAN", None),
    "matpes-r2scan-transfer": ("fine-tune, no replay (transfer)", MATPES_R2SCAN, "r2SCAN", dict(replay="none")),
    "matpes-r2scan-mfi": ("mfi adapter, distill replay, all weights", MATPES_R2SCAN, "r2SCAN", dict(replay="distill")),
    "matpes-r2scan-mfi-adapter": ("mfi adapter, distill replay, adapter only", MATPES_R2SCAN, "r2SCAN",
                                  dict(replay="distill", trainable="adapter")),
    "matpes-pbe-mfi": ("mfi adapter, distill replay, all weights", MATPES_PBE, "PBE", dict(replay="distill")),
    "sevenn-adapter": ("mfi, low-rank adapter rank {rank}, no replay", SEVENN_MF0, "r2SCAN",
                       dict(replay="none", trainable="adapter", rank=8)),
    "sevenn-adapter-no-skips": ("mfi, low-rank adapter rank {rank} without the skip paths, no replay", SEVENN_MF0, "r2SCAN",
                                dict(replay="none", trainable="adapter", rank=8, self_connections=False)),  # before 2026-12-03
    "sevenn-adapter-radial": ("mfi, low-rank adapter rank {rank} with radial networks, no replay", SEVENN_MF0, "r2SCAN",
                              dict(replay="none", trainable="adapter", rank=8, radial=True)),
    "sevenn-transfer": ("fine-tune, no replay (transfer)", SEVENN_MF0, "r2SCAN", dict(replay="none")),
    "matpes-r2scan-lowrank-target": ("mfi, the target's own low-rank update rank {rank}, no replay", MATPES_R2SCAN, "r2SCAN",
                                     dict(replay="none", trainable="lowrank-target", rank=8)),
    "matpes-r2scan-delta": ("Delta: frozen model + from-scratch M3GNet", MATPES_R2SCAN, "r2SCAN", "delta"),
    "sevenn-delta": ("Delta: frozen model + from-scratch M3GNet", SEVENN_MF0, "r2SCAN", "delta"),
    "scratch-mfi": ("ours from scratch: mfi M3GNet on {low} + the training frames", None, None, "scratch-mfi"),
}  # fmt: skip
DEFAULT_RUNS = ["matpes-r2scan-zero-shot", "matpes-pbe-zero-shot", "sevenn-zero-shot", "matpes-r2scan-transfer",
                "matpes-r2scan-mfi", "matpes-r2scan-mfi-adapter", "matpes-pbe-mfi"]  # fmt: skip


def zero_shot(name, base, train, test, device):
    foundation = foundation_with_offset(name, base, train, device)  # the per-element offset between the codes, from the training frames
    return {"test": error_metrics(parity_arrays(test, foundation.predict(test, base)), len(test)), "steps": 0}


def delta_on_foundation(name, base, train, val, test, config, device, out_dir=None):
    foundation = foundation_with_offset(name, base, train, device)
    elements = sorted({int(z) for s in train for z in s.numbers})
    delta = m3gnet_potential(elements, [DELTA], seed=config.seed).to(device)
    combined, result = foundation_delta(foundation, base, delta, train, val, config, out_dir)
    return {"test": error_metrics(parity_arrays(test, combined.predict(test)), len(test)), "steps": result.optimizer_steps,
            "training_seconds": result.training_seconds,
            "val": error_metrics(parity_arrays(val, combined.predict(val)), len(val))}  # fmt: skip


def scratch_mfi(low, train, val, test, target, config, device, out_dir=None):
    """Ko & Ong's recipe without a foundation model: one M3GNet from random weights on both levels."""
    low_levels = fidelities_of(low)
    if target in low_levels:
        raise ValueError(f"--low-data has frames at the target level {target!r}: it must hold a lower level only")
    elements = sorted({int(z) for s in [*low, *train] for z in s.numbers})
    potential = m3gnet_potential(elements, [*low_levels, target], seed=config.seed).to(device)
    result = train_potential(potential, [*low, *train], val, replace(config, monitor=target), out_dir)
    return {"test": errors(potential, test, target), "steps": result.optimizer_steps, "val": errors(potential, val, target),
            "training_seconds": result.training_seconds,
            "best_epoch": result.best_epoch, "epochs": len(result.history)}  # best_epoch (0-based) = epochs - 1: still improving


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=str(Path(__file__).resolve().parents[2] / "shared/data/water/dcr2scan_paesani.extxyz.gz"))
    parser.add_argument("--out", default="docs/results/pretrained/water_dcr2scan")
    parser.add_argument("--target", default="DC-r2SCAN", help="the level of the frames (frames without one count as it)")
    parser.add_argument("--start", type=int, default=0)
    parser.add_argument("--every", type=int, default=72)
    parser.add_argument("--limit", type=int, help="at most this many frames from --start")
    parser.add_argument("--test-frames", type=int, default=3)
    parser.add_argument("--val-frames", type=int, default=1)
    parser.add_argument("--train-frames", type=int, default=2)
    parser.add_argument("--runs", nargs="+", choices=list(RUNS), default=DEFAULT_RUNS)
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--lr", type=float, default=2e-4)
    parser.add_argument("--scratch-epochs", "--delta-epochs", type=int, default=100,
                        help="epochs of the from-scratch models (Delta's, scratch-mfi)")
    parser.add_argument("--scratch-lr", "--delta-lr", type=float, default=1e-3, help="their learning rate")
    parser.add_argument("--low-data", help="scratch-mfi's lower-level frames (fidelity from the file)")
    parser.add_argument("--low-start", type=int, default=0)
    parser.add_argument("--low-every", type=int, default=1)
    parser.add_argument("--low-limit", type=int, help="at most this many lower-level frames")
    parser.add_argument("--rank", type=int, help="rank of the low-rank runs' updates (default: 8)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N: where every model runs and trains")
    parser.add_argument("--checkpoints", help="keep each training run's checkpoint in this folder/<run> and resume from it")
    args = parser.parse_args(argv)
    try:
        parse_device(args.device, "--device")
    except ValueError as error:
        parser.error(str(error))
    torch.set_num_threads(args.threads)
    frames = read_structures(args.data, every=args.every, start=args.start, limit=args.limit, default_fidelity=args.target)
    n_test, n_val = args.test_frames, args.val_frames
    if n_test + n_val + args.train_frames > len(frames):
        raise ValueError(f"{args.data}: {len(frames)} frames read, fewer than {n_test} test + {n_val} validation + "
                         f"{args.train_frames} training frames")  # fmt: skip
    order = np.random.default_rng(args.seed).permutation(len(frames))
    test, val = [frames[k] for k in order[:n_test]], [frames[k] for k in order[n_test : n_test + n_val]]
    low = []
    if "scratch-mfi" in args.runs:
        if not args.low_data:
            parser.error("--runs scratch-mfi needs --low-data: frames at a lower level of theory to train beside the target's")
        low = read_structures(args.low_data, every=args.low_every, start=args.low_start, limit=args.low_limit)
    train = [frames[k] for k in order[n_test + n_val : n_test + n_val + args.train_frames]]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    records = []
    scratch_config = TrainConfig(max_epochs=args.scratch_epochs, learning_rate=args.scratch_lr, batch_size=1, seed=args.seed)
    for key in args.runs:
        label, name, base, settings = RUNS[key]
        if isinstance(settings, dict) and "rank" in settings:
            settings = settings | ({"rank": args.rank} if args.rank else {})
            label = label.format(rank=settings["rank"])
        if settings == "scratch-mfi":
            label = label.format(low=f"{len(low)} {'/'.join(fidelities_of(low))} frames")
        elif entry(name).locate()[0] is None:
            print(f"skipped {name}: {entry(name).locate()[1]}")
            continue
        start = time.time()
        checkpoints = Path(args.checkpoints) / key if args.checkpoints else None
        if settings is None:
            record = zero_shot(name, base, train, test, args.device)
        elif settings == "delta":
            record = delta_on_foundation(name, base, train, val, test, scratch_config, args.device, checkpoints)
        elif settings == "scratch-mfi":
            record = scratch_mfi(low, train, val, test, args.target, scratch_config, args.device, checkpoints)
        else:
            config = FinetuneConfig(
                train=TrainConfig(max_epochs=args.epochs, learning_rate=args.lr, batch_size=1, seed=args.seed),
                **settings, device=args.device,
            )
            result = finetune(name, args.target, train, val, config, base_fidelity=base, out_dir=checkpoints)
            record = {"test": errors(result.potential, test, args.target), "steps": result.report["optimizer_steps"],
                      "training_seconds": result.report["training_seconds"],
                      "val": result.report["after"]["target_val"], "base_held_out": result.report["after"].get("base_held_out"),
                      "base_held_out_before": result.report["before"].get("base_held_out")}  # fmt: skip
        record.update(label=label, pretrained=name, base=base, seconds=round(time.time() - start, 1))
        records.append(record)
        print(json.dumps(record, default=float))
        (out / "results.json").write_text(json.dumps(records, indent=1, default=float))
    kinds = {RUNS[k][3] if isinstance(RUNS[k][3], str) else "fine-tune" for k in args.runs if RUNS[k][3] is not None}
    budgets = [f"fine-tuning: {args.epochs} epochs, lr {args.lr}, batch 1"] if "fine-tune" in kinds else []
    if kinds & {"delta", "scratch-mfi"}:
        budgets.append(f"from-scratch models: {args.scratch_epochs} epochs, lr {args.scratch_lr}, batch 1")
    if low:
        budgets.append(f"scratch-mfi's lower level: {len(low)} frames of {Path(args.low_data).name} (from frame "
                        f"{args.low_start}, step {args.low_every})")  # fmt: skip
    lines = [
        f"{args.target} liquid water, {len(train)} training frames of {len(train[0])} atoms (of {len(frames)}: from frame "
        f"{args.start}, step {args.every}, of {Path(args.data).name}), {n_val} validation, {n_test} test frames; seed "
        f"{args.seed}; {''.join(text + '; ' for text in budgets)}{machine(args.device)}."
        f" Command: `python examples/pretrained_water_finetune.py {' '.join(argv or sys.argv[1:])}`.",
        "",
        "| model | pretrained | base | test E MAE (meV/atom) | test F MAE (meV/A) | steps | base-level drift F (meV/A) | time (s) | training (s) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in records:
        drift = r.get("base_held_out")
        drift_text = "-" if not drift else f"{1000 * drift['force_mae']:.1f}"
        training_text = f"{r['training_seconds']:.1f}" if "training_seconds" in r else "-"  # zero-shot trains nothing
        lines.append(
            f"| {r['label']} | {r['pretrained'] or '-'} | {r['base'] or '-'} | {1000 * r['test']['energy_mae_per_atom']:.2f} "
            f"| {1000 * r['test']['force_mae']:.1f} | {r['steps']} | {drift_text} | {r['seconds']} | {training_text} |"
        )
    (out / "report.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
