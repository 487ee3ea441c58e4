"""Which container for on-disk shards: LMDB or HDF5 (issue 17), and what a structure costs to
read from shards against parsing extxyz.

    pip install lmdb h5py
    python benchmarks/shard_formats.py [--structures 20000] [--out docs/shard_formats_table.md]

The structures are rattled copies of the bundled water clusters (about 9 atoms each). Both
containers hold the same bytes per structure (shards.encode), so the table compares the
containers: LMDB, one key per structure; HDF5, one variable-length uint8 dataset with a row
per structure. Timed: writing, reading every structure in order, reading in a shuffled order
(what a training epoch does), and, for reference, parsing the same structures from extxyz.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from table_output import publish

from fidelity_adapters.bundled import rattled_water_clusters
from fidelity_adapters.compare import cpu_model
from fidelity_adapters.data import read_structures, write_structures
from fidelity_adapters.shards import ShardedStructures, decode, encode, write_shards


def write_hdf5(structures, path: Path) -> None:
    import h5py

    records = [np.frombuffer(encode(s), dtype=np.uint8) for s in structures]
    with h5py.File(path, "w") as handle:
        data = handle.create_dataset("records", (len(records),), dtype=h5py.vlen_dtype(np.uint8))
        data[:] = records


def read_hdf5(path: Path, order) -> None:
    import h5py

    with h5py.File(path, "r") as handle:
        data = handle["records"]
        for k in order:
            decode(data[k].tobytes())


def timed(function) -> float:
    start = time.perf_counter()
    function()
    return time.perf_counter() - start


def size_mb(path: Path) -> float:
    files = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]
    return sum(p.stat().st_size for p in files) / 1e6


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--structures", type=int, default=20000)
    parser.add_argument("--out", help="write the table to this markdown file as well")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    n = args.structures
    structures = list(rattled_water_clusters(n))
    shuffled = np.random.default_rng(1).permutation(n)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        seconds = timed(lambda: write_shards(structures, tmp / "lmdb", shard_size=max(1, n // 4)))
        sharded = ShardedStructures(tmp / "lmdb")
        rows.append(("LMDB (shards.py)", seconds, size_mb(tmp / "lmdb"), timed(lambda: list(sharded)),
                     timed(lambda: [sharded[int(k)] for k in shuffled])))  # fmt: skip
        seconds = timed(lambda: write_hdf5(structures, tmp / "records.h5"))
        rows.append(("HDF5 (h5py, vlen rows)", seconds, size_mb(tmp / "records.h5"), timed(lambda: read_hdf5(tmp / "records.h5", range(n))),
                     timed(lambda: read_hdf5(tmp / "records.h5", shuffled))))  # fmt: skip
        seconds = timed(lambda: write_structures(structures, tmp / "frames.extxyz"))
        parse = timed(lambda: read_structures(tmp / "frames.extxyz"))
        rows.append(("extxyz (ase, parsed whole)", seconds, size_mb(tmp / "frames.extxyz"), parse, float("nan")))
    lines = [
        f"{n} rattled water clusters (9 atoms on average), one process, {os.cpu_count()} cores ({cpu_model()}), torch threads 1, "
        f"{time.strftime('%Y-%m-%d')}. Command: `python benchmarks/shard_formats.py --structures {n}`.",
        "",
        "| container | write (s) | size (MB) | read in order (us/structure) | read shuffled (us/structure) | shuffled vs LMDB |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    reference = rows[0][4]
    for name, write_s, mb, ordered, shuffled_s in rows:
        ratio = "-" if not np.isfinite(shuffled_s) else f"{shuffled_s / reference:.2f}x"
        shuffled_text = "-" if not np.isfinite(shuffled_s) else f"{1e6 * shuffled_s / n:.0f}"
        lines.append(f"| {name} | {write_s:.2f} | {mb:.1f} | {1e6 * ordered / n:.0f} | {shuffled_text} | {ratio} |")
    publish(lines, args.out)


if __name__ == "__main__":
    main()
