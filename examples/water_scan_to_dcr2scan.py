"""Multi-fidelity water: many SCAN frames (low fidelity) + few DC-r2SCAN frames (high).

Reads the public sets in ../shared/data/water (or --data-dir), subsamples them to fit a
small machine, and compares an mfi model (SCAN + DC-r2SCAN) with a 1fi model (DC-r2SCAN
only) on held-out DC-r2SCAN frames. The two sets share no structures, so the hifi test
frames are simply frames that neither model trains on.

    python examples/water_scan_to_dcr2scan.py --scan-frames 40 --r2scan-frames 16 --epochs 20
"""

import argparse
from pathlib import Path

import numpy as np

from fidelity_adapters import TrainConfig, errors, m3gnet_potential, read_structures, train

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "water"


def spread(path: Path, total_frames: int, wanted: int, **kwargs):
    """`wanted` frames spread evenly over a file of `total_frames` frames."""
    return read_structures(path, every=max(1, total_frames // wanted), limit=wanted, **kwargs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--scan-frames", type=int, default=40)
    parser.add_argument("--r2scan-frames", type=int, default=16, help="split 50/25/25 into train/validation/test")
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--out", type=Path, default=Path("runs/water_scan_dcr2scan"))
    args = parser.parse_args()

    scan = spread(args.data_dir / "scan_csiprinceton.extxyz.gz", 1903, args.scan_frames)
    r2scan = spread(args.data_dir / "dcr2scan_paesani.extxyz.gz", 2184, args.r2scan_frames)
    order = np.random.default_rng(0).permutation(len(r2scan))
    n_train, n_val = len(r2scan) // 2, len(r2scan) // 4
    r2_train = [r2scan[k] for k in order[:n_train]]
    r2_val = [r2scan[k] for k in order[n_train : n_train + n_val]]
    r2_test = [r2scan[k] for k in order[n_train + n_val :]]
    print(f"SCAN train {len(scan)} frames; DC-r2SCAN train/val/test {len(r2_train)}/{len(r2_val)}/{len(r2_test)} frames")

    config = TrainConfig(max_epochs=args.epochs, batch_size=args.batch_size, monitor="DC-r2SCAN")
    rows = {}
    for name, fidelities, train_set in (("mfi", ["SCAN", "DC-r2SCAN"], scan + r2_train), ("1fi", ["DC-r2SCAN"], r2_train)):
        potential = m3gnet_potential(["H", "O"], fidelities)
        train(potential, train_set, r2_val, config, out_dir=args.out / name)
        rows[name] = errors(potential, r2_test, "DC-r2SCAN")
        refs = dict(zip(potential.fidelities, potential.fidelity_state.elemental_energies.tolist()))
        print(f"{name}: fitted elemental references (eV, H and O) per fidelity {refs}")
    print(f"\nDC-r2SCAN test ({len(r2_test)} frames)   E MAE (meV/atom)   F MAE (meV/A)")
    for name, r in rows.items():
        print(f"{name:<28}{1000 * r['energy_mae_per_atom']:>17.2f}{1000 * r['force_mae']:>16.1f}")


if __name__ == "__main__":
    main()
