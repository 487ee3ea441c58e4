"""Make the bundled PBE/SCAN water-cluster data set (fidelity_adapters/data_files/).

Geometries come from short rigid-TIP3P MD of (H2O)2-4 clusters; every structure is
labelled with PBE/def2-SVP and with SCAN/def2-SVP (all of them by default, or a random subset
of --n-scan; PySCF, density fitting). Labels are appended to a partial file as they come, so
a killed run resumes; run again with a larger --n-scan to add SCAN labels to a finished set
(that is how the bundled file was made: 90 SCAN first, then the other 210).

    pip install -e '.[pyscf]'
    python examples/make_bundled_data.py               # about 1.5 h on 2 idle cores
"""

import argparse
import gzip
import shutil
from pathlib import Path

import numpy as np
from ase.io import read, write

from fidelity_adapters.pyscf_labeller import label_into
from fidelity_adapters.water_clusters import sample_water_clusters

OUT = Path(__file__).resolve().parents[1] / "fidelity_adapters" / "data_files" / "water_clusters_pbe_scan.extxyz.gz"


def start_from_finished(out: Path, partial: Path, geometries: Path) -> None:
    """Seed the partial files from a finished data set, so that only new labels are computed."""
    with gzip.open(out, "rt") as handle:
        frames = read(handle, ":", format="extxyz")
    write(partial, frames, format="extxyz")
    pbe = sorted((a for a in frames if a.info["fidelity"] == "PBE"), key=lambda a: a.info["struct_id"])
    bare = []
    for atoms in pbe:
        geometry = atoms.copy()
        geometry.calc = None
        geometry.info = {"struct_id": atoms.info["struct_id"]}
        bare.append(geometry)
    write(geometries, bare, format="extxyz")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-structures", type=int, default=300)
    parser.add_argument("--n-scan", type=int, default=300)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()

    partial = args.out.with_suffix("").with_suffix(".partial.extxyz")
    geometries = partial.with_suffix(".geometries.extxyz")  # sampled once, reused on resume
    if args.out.exists() and not partial.exists():
        start_from_finished(args.out, partial, geometries)
    if geometries.exists():
        structures = read(geometries, ":")
    else:
        structures = sample_water_clusters(args.n_structures, seed=args.seed)
        write(geometries, structures)
    scan_ids = np.sort(np.random.default_rng(args.seed).choice(len(structures), args.n_scan, replace=False))
    label_into(structures, "PBE", partial)
    label_into([structures[i] for i in scan_ids], "SCAN", partial)

    frames = read(partial, ":")
    frames.sort(key=lambda a: (a.info["fidelity"] != "PBE", a.info["struct_id"]))
    tmp = args.out.with_suffix(".tmp")
    with gzip.open(tmp, "wt") as handle:
        write(handle, frames, format="extxyz")
    shutil.move(tmp, args.out)
    partial.unlink()
    geometries.unlink()
    print(f"wrote {len(frames)} frames to {args.out}")


if __name__ == "__main__":
    main()
