"""Pretrained potentials adapted to liquid water at DC-r2SCAN with two labelled frames
(issue 13, item 5, a first CPU-sized slice): zero-shot foundation models against the same
models fine-tuned with and without replay, on the same split.

    python examples/pretrained_water_finetune.py [--data ../shared/data/water/dcr2scan_paesani.extxyz.gz]
        [--out docs/results/pretrained/water_dcr2scan] [--train-frames 2] [--epochs 8] [--seed 0]

Frames: every 72nd of the shared DC-r2SCAN set (31 frames of 768 atoms, 198-368 K); a seeded
permutation gives 3 test frames, 1 validation frame and the first `train_frames` training
frames (2 of 31 is about 5 %). Zero-shot energies are compared after a per-element offset
fitted on the training frames (the codes' energy zeros differ); fine-tuned models get the
same correction inside finetune(). Every fine-tuning run has the same epochs, learning rate
and batch size; its optimizer steps are in the table (replay doubles the steps per epoch).
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import numpy as np
import torch

from fidelity_adapters import read_structures
from fidelity_adapters.evaluation import errors
from fidelity_adapters.finetune import FinetuneConfig, finetune, refit_references_around
from fidelity_adapters.pretrained import entry, load_pretrained
from fidelity_adapters.training import TrainConfig

TARGET = "DC-r2SCAN"
RUNS = [  # label, pretrained, base, finetune settings (None: zero-shot)
    ("zero-shot", "matgl:M3GNet-MatPES-r2SCAN-v2025.1", "r2SCAN", None),
    ("zero-shot", "matgl:M3GNet-MatPES-PBE-v2025.1", "PBE", None),
    ("zero-shot", "sevenn:7net-mf-0", "r2SCAN", None),
    ("fine-tune, no replay (transfer)", "matgl:M3GNet-MatPES-r2SCAN-v2025.1", "r2SCAN", dict(replay="none")),
    ("mfi adapter, distill replay, all weights", "matgl:M3GNet-MatPES-r2SCAN-v2025.1", "r2SCAN", dict(replay="distill")),
    ("mfi adapter, distill replay, adapter only", "matgl:M3GNet-MatPES-r2SCAN-v2025.1", "r2SCAN",
     dict(replay="distill", trainable="adapter")),
    ("mfi adapter, distill replay, all weights", "matgl:M3GNet-MatPES-PBE-v2025.1", "PBE", dict(replay="distill")),
]  # fmt: skip


def zero_shot(name, base, train, test):
    potential = load_pretrained(name, add=[TARGET], like=base)
    refit_references_around(potential, train)  # the per-element offset between the codes, from the training frames
    return {"test": errors(potential, test, TARGET), "steps": 0}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=str(Path(__file__).resolve().parents[2] / "shared/data/water/dcr2scan_paesani.extxyz.gz"))
    parser.add_argument("--out", default="docs/results/pretrained/water_dcr2scan")
    parser.add_argument("--train-frames", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--lr", type=float, default=2e-4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    frames = read_structures(args.data, every=72, default_fidelity=TARGET)
    order = np.random.default_rng(args.seed).permutation(len(frames))
    test, val = [frames[k] for k in order[:3]], [frames[k] for k in order[3:4]]
    train = [frames[k] for k in order[4 : 4 + args.train_frames]]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    records = []
    for label, name, base, settings in RUNS:
        if entry(name).locate()[0] is None:
            print(f"skipped {name}: {entry(name).locate()[1]}")
            continue
        start = time.time()
        if settings is None:
            record = zero_shot(name, base, train, test)
        else:
            config = FinetuneConfig(
                train=TrainConfig(max_epochs=args.epochs, learning_rate=args.lr, batch_size=1, seed=args.seed, progress=False),
                **settings,
            )
            result = finetune(name, TARGET, train, val, config, base_fidelity=base)
            record = {"test": errors(result.potential, test, TARGET), "steps": result.report["optimizer_steps"],
                      "base_held_out": result.report["after"].get("base_held_out"),
                      "base_held_out_before": result.report["before"].get("base_held_out")}  # fmt: skip
        record.update(label=label, pretrained=name, base=base, seconds=round(time.time() - start, 1))
        records.append(record)
        print(json.dumps(record, default=float))
        (out / "results.json").write_text(json.dumps(records, indent=1, default=float))
    lines = [
        f"DC-r2SCAN liquid water, {len(train)} training frames of 768 atoms (of {len(frames)}: every 72nd frame of the "
        f"shared set), 1 validation, 3 test frames; seed {args.seed}; {args.epochs} epochs, lr {args.lr}, batch 1; "
        f"torch {torch.__version__}, {args.threads} threads, {platform.machine()} CPU. "
        "Command: `python examples/pretrained_water_finetune.py`.",
        "",
        "| model | pretrained | base | test E MAE (meV/atom) | test F MAE (meV/A) | steps | base-level drift F (meV/A) | time (s) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in records:
        drift = r.get("base_held_out")
        drift_text = "-" if not drift else f"{1000 * drift['force_mae']:.1f}"
        lines.append(
            f"| {r['label']} | {r['pretrained']} | {r['base']} | {1000 * r['test']['energy_mae_per_atom']:.2f} "
            f"| {1000 * r['test']['force_mae']:.1f} | {r['steps']} | {drift_text} | {r['seconds']} |"
        )
    (out / "report.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
