"""Make the bundled water-cluster data set (fidelity_adapters/data_files/water_clusters.extxyz.gz).

Geometries come from short rigid-TIP3P MD of (H2O)2-4 clusters. Every geometry is labelled
with PBE and r2SCAN, a random subset also with SCAN, each at the converged settings of
fidelity_adapters.pyscf_labeller.LEVELS (def2-SVP, density fitting; data_files/README.md
has the convergence check). Labels are appended to partial files as they come, so a killed
run resumes. `--part K/N` labels every N-th geometry into its own partial file, so N copies
can run side by side; a last run without --part merges them, labels what is missing and
writes the data set.

    pip install -e '.[pyscf]'
    python examples/make_bundled_data.py --part 0/2 & python examples/make_bundled_data.py --part 1/2; wait
    python examples/make_bundled_data.py
    python examples/make_bundled_data.py --check   # convergence of each level on a sample -> README numbers
    # the bundled file reused the geometries and PBE labels of the earlier PBE/SCAN file
    # (git show d19841b:fidelity_adapters/data_files/water_clusters_pbe_scan.extxyz.gz),
    # made with the same PBE settings: --reuse that_file --reuse-fidelities PBE
"""

import argparse
import gzip
import json
import shutil
import time
from pathlib import Path

import numpy as np
from ase.io import read, write

from fidelity_adapters.data import stream_frames
from fidelity_adapters.pyscf_labeller import LEVELS, check_convergence, label_into, labelled_keys
from fidelity_adapters.water_clusters import sample_water_clusters

OUT = Path(__file__).resolve().parents[1] / "fidelity_adapters" / "data_files" / "water_clusters.extxyz.gz"


def convergence_file(out: Path) -> Path:
    return out.with_suffix("").with_suffix(".convergence.json")


def read_any(path: Path) -> list:
    """Every frame of a plain or gzipped extxyz file."""
    return [atoms for _, atoms in stream_frames(path, every=1, limit=None)]


def bare_geometries(frames: list) -> list:
    """One unlabelled copy of each struct_id, in struct_id order."""
    by_id = {}
    for atoms in frames:
        geometry = atoms.copy()
        geometry.calc = None
        geometry.info = {"struct_id": int(atoms.info["struct_id"])}
        by_id.setdefault(geometry.info["struct_id"], geometry)
    return [by_id[k] for k in sorted(by_id)]


def prepare(args, partial: Path, geometries: Path) -> None:
    """Write the geometries once (and the reused labels), atomically, so parts agree on them."""
    if geometries.exists():
        return
    if args.reuse:
        frames = read_any(args.reuse)
        structures = bare_geometries(frames)
        kept = [a for a in frames if a.info["fidelity"] in args.reuse_fidelities]
        if not partial.exists():
            write(partial, kept, format="extxyz")
    else:
        structures = sample_water_clusters(args.n_structures, seed=args.seed)
    tmp = geometries.with_suffix(".tmp")
    write(tmp, structures, format="extxyz")
    tmp.replace(geometries)


def check(structures: list, path: Path, n_sample: int, seed: int) -> None:
    """Check every level on the same sample (one geometry per cluster size first) and save the numbers."""
    rng = np.random.default_rng(seed)
    by_size = {}
    for k in rng.permutation(len(structures)):
        by_size.setdefault(len(structures[k]), []).append(int(k))
    picked = [ids[0] for _, ids in sorted(by_size.items())]
    picked += [k for ids in by_size.values() for k in ids[1:]][: max(0, n_sample - len(picked))]
    sample = [structures[k] for k in picked[:n_sample]]
    results = {}
    for fidelity in LEVELS:
        start = time.time()
        result = check_convergence(sample, fidelity)
        print(result.report(), flush=True)
        results[fidelity] = {
            "settings": result.level.describe(), "reference": result.reference.describe(),
            "struct_ids": [int(a.info["struct_id"]) for a in sample], "atoms": [len(a) for a in sample],
            "energy_mae_eV_per_atom": result.energy_mae, "energy_max_eV_per_atom": result.energy_max,
            "force_mae_eV_per_A": result.force_mae, "force_max_eV_per_A": result.force_max,
            "passed": result.passed, "seconds": round(time.time() - start, 1),
        }  # fmt: skip
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(results, indent=1))
    tmp.replace(path)
    print(f"wrote {path}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-structures", type=int, default=300)
    parser.add_argument("--n-r2scan", type=int, default=300)
    parser.add_argument("--n-scan", type=int, default=40)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument("--part", default=None, help="K/N: label every N-th geometry, starting at K")
    parser.add_argument("--reuse", type=Path, default=None, help="take geometries (and some labels) from this data set")
    parser.add_argument("--reuse-fidelities", nargs="*", default=["PBE"])
    parser.add_argument("--check", action="store_true", help="only check each level's convergence on a sample")
    parser.add_argument("--check-sample", type=int, default=3)
    args = parser.parse_args()

    partial = args.out.with_suffix("").with_suffix(".partial.extxyz")
    geometries = partial.with_suffix(".geometries.extxyz")
    if args.check:
        structures = bare_geometries(read_any(args.out)) if args.out.exists() else read(geometries, ":")
        check(structures, convergence_file(args.out), args.check_sample, args.seed)
        return
    prepare(args, partial, geometries)
    structures = read(geometries, ":")
    rng = np.random.default_rng(args.seed)
    wanted = {
        "PBE": range(len(structures)),
        "r2SCAN": np.sort(rng.choice(len(structures), args.n_r2scan, replace=False)),
        "SCAN": np.sort(rng.choice(len(structures), args.n_scan, replace=False)),
    }
    if args.part:
        k, n = (int(x) for x in args.part.split("/"))
        target = partial.with_suffix(f".part{k}of{n}.extxyz")
        done = labelled_keys(partial)
        for fidelity, ids in wanted.items():
            mine = [structures[i] for i in ids if i % n == k and (structures[i].info["struct_id"], fidelity) not in done]
            label_into(mine, fidelity, target)
        return

    for part in sorted(partial.parent.glob(partial.with_suffix("").name + ".part*.extxyz")):
        with open(partial, "a") as handle:
            write(handle, read(part, ":"), format="extxyz")
        part.unlink()
    for fidelity, ids in wanted.items():
        label_into([structures[i] for i in ids], fidelity, partial)

    order = {"PBE": 0, "r2SCAN": 1, "SCAN": 2}
    frames = read(partial, ":")
    frames.sort(key=lambda a: (order[a.info["fidelity"]], a.info["struct_id"]))
    tmp = args.out.with_suffix(".tmp")
    with gzip.open(tmp, "wt") as handle:
        write(handle, frames, format="extxyz")
    shutil.move(tmp, args.out)
    partial.unlink()
    geometries.unlink()
    print(f"wrote {len(frames)} frames to {args.out}")


if __name__ == "__main__":
    main()
