"""Structures on disk, read one at a time, so that training memory does not grow with the data.

    fidelity-adapters prepare data*.extxyz --out DIR        (or write_shards(frames, DIR))
    structures = ShardedStructures(DIR)                      # a Sequence[LabelledStructure]

DIR holds `manifest.json` (format, counts, fidelities, the shard files with their SHA-256) and
LMDB shards of `shard_size` structures each, key = index within the shard, value = one
structure encoded by `encode` (a JSON header, then the raw arrays). LMDB was chosen over HDF5 by
measurement (benchmarks/shard_formats.py, docs/benchmarks.md): random reads of one structure,
which every shuffled epoch makes, cost several times less. Each process (DataLoader workers
included) opens its own read-only handle of a shard on first use, shared by every view of it.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import lmdb
import numpy as np

from .data import LabelledStructure
from .serialization import atomic_write

FORMAT = "fidelity-adapters shards"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
_ARRAYS = ("numbers", "positions", "cell", "pbc", "forces", "stress")
_DTYPES = {"numbers": "<i8", "positions": "<f8", "cell": "<f8", "pbc": "|b1", "forces": "<f8", "stress": "<f8"}
_MAP_SIZE = 1 << 40  # LMDB's address-space reservation, not disk use


def _plain(value):
    """info values as JSON can hold them (numpy scalars and arrays to Python)."""
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value if isinstance(value, (str, int, float, bool)) or value is None else str(value)


def encode(structure: LabelledStructure) -> bytes:
    """One structure as bytes: a length-prefixed JSON header (fidelity, energy, label, info, and
    the shape of each array present), then the arrays' raw little-endian bytes."""
    arrays = {name: getattr(structure, name) for name in _ARRAYS if getattr(structure, name) is not None}
    header = {
        "fidelity": structure.fidelity, "energy": None if not structure.has_energy else float(structure.energy),
        "label": structure.label, "info": _plain(structure.info),
        "arrays": {name: list(np.shape(value)) for name, value in arrays.items()},
    }  # fmt: skip
    head = json.dumps(header).encode()
    body = b"".join(np.ascontiguousarray(value, dtype=_DTYPES[name]).tobytes() for name, value in arrays.items())
    return len(head).to_bytes(4, "little") + head + body


def decode(data: bytes) -> LabelledStructure:
    size = int.from_bytes(data[:4], "little")
    header = json.loads(data[4 : 4 + size])
    offset, arrays = 4 + size, {}
    for name, shape in header["arrays"].items():
        dtype = np.dtype(_DTYPES[name])
        count = int(np.prod(shape, dtype=np.int64))
        arrays[name] = np.frombuffer(data, dtype=dtype, count=count, offset=offset).reshape(shape).copy()
        offset += count * dtype.itemsize
    energy = header["energy"]
    return LabelledStructure(
        numbers=arrays["numbers"], positions=arrays["positions"], cell=arrays["cell"], pbc=arrays["pbc"],
        fidelity=header["fidelity"], energy=float("nan") if energy is None else energy, forces=arrays.get("forces"),
        stress=arrays.get("stress"), label=header["label"], info=header["info"],
    )  # fmt: skip


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def write_shards(structures: Iterable[LabelledStructure], out_dir: str | Path, shard_size: int = 10_000, sources=()) -> Path:
    """Write structures (any iterable, read once: a stream of a large file is never held) as
    shards in out_dir, the manifest last, atomically: a directory without one is unfinished."""
    if shard_size < 1:
        raise ValueError(f"shard_size must be >= 1, not {shard_size}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if (out / MANIFEST).exists():
        raise ValueError(f"{out} already holds prepared shards ({MANIFEST}); choose another --out or remove it")
    shards, counts, n_atoms = [], {}, 0
    env, txn, in_shard = None, None, 0

    def close() -> None:
        txn.commit()
        env.sync()
        env.close()
        path = out / shards[-1]["file"]
        shards[-1].update(sha256=_sha256(path))

    for s in structures:
        if env is None or in_shard == shard_size:
            if env is not None:
                close()
            name = f"shard_{len(shards):05d}.lmdb"
            (out / name).unlink(missing_ok=True)  # left by an interrupted run
            env = lmdb.open(str(out / name), map_size=_MAP_SIZE, subdir=False, lock=False)
            txn, in_shard = env.begin(write=True), 0
            shards.append({"file": name, "count": 0})
        txn.put(str(in_shard).encode(), encode(s))
        in_shard += 1
        shards[-1]["count"] += 1
        counts[s.fidelity] = counts.get(s.fidelity, 0) + 1
        n_atoms += len(s)
    if env is None:
        raise ValueError("no structures to prepare")
    close()
    manifest = {
        "format": FORMAT, "version": FORMAT_VERSION, "n_structures": sum(counts.values()), "n_atoms": n_atoms,
        "fidelities": counts, "shards": shards, "sources": [str(p) for p in sources],
    }  # fmt: skip
    atomic_write(out / MANIFEST, lambda tmp: Path(tmp).write_text(json.dumps(manifest, indent=1)))
    return out


_OPEN: dict[str, object] = {}  # LMDB opens a file once per process: every view of it shares the handle
os.register_at_fork(after_in_child=_OPEN.clear)  # a forked DataLoader worker opens its own: handles do not survive fork


def _open_readonly(path: Path):
    key = str(path.resolve())
    if key not in _OPEN:
        _OPEN[key] = lmdb.open(key, subdir=False, readonly=True, lock=False, readahead=False)
    return _OPEN[key]


def is_prepared(path: str | Path) -> bool:
    return (Path(path) / MANIFEST).is_file()


class ShardedStructures(Sequence[LabelledStructure]):
    """The structures of a prepared directory (or a subset of them, `subset`), read from disk
    on each access; nothing but the manifest is held in memory."""

    def __init__(self, path: str | Path, indices: Sequence[int] | None = None, verify: bool = False):
        self.path = Path(path)
        try:
            self.manifest = json.loads((self.path / MANIFEST).read_text())
        except FileNotFoundError:
            raise ValueError(f"{self.path}: no {MANIFEST}; not prepared shards (or an unfinished `prepare`)") from None
        except (OSError, json.JSONDecodeError) as error:
            raise ValueError(f"{self.path / MANIFEST}: unreadable ({error})") from None
        if self.manifest.get("format") != FORMAT or self.manifest.get("version") != FORMAT_VERSION:
            raise ValueError(f"{self.path}: not {FORMAT} version {FORMAT_VERSION} ({self.manifest.get('format')!r}, "
                             f"version {self.manifest.get('version')!r})")  # fmt: skip
        self._starts = np.cumsum([0] + [s["count"] for s in self.manifest["shards"]])
        total = int(self._starts[-1])
        self.indices = np.arange(total) if indices is None else np.asarray(indices, dtype=np.int64)
        if self.indices.size and (self.indices.min() < 0 or self.indices.max() >= total):
            raise IndexError(f"{self.path}: indices outside 0..{total - 1}")
        for shard in self.manifest["shards"]:
            if not (self.path / shard["file"]).is_file():
                raise ValueError(f"{self.path}: shard {shard['file']} is missing")
            if verify and _sha256(self.path / shard["file"]) != shard["sha256"]:
                raise ValueError(f"{self.path / shard['file']}: SHA-256 differs from the manifest (corrupt or changed)")

    def subset(self, positions: Sequence[int]) -> "ShardedStructures":
        """A view of some of these structures, by position in this sequence (the manifest is
        not read again)."""
        view = copy.copy(self)
        view.indices = self.indices[np.asarray(positions, dtype=np.int64)]
        return view

    def __len__(self) -> int:
        return int(self.indices.size)

    def __getitem__(self, position):
        if isinstance(position, slice):
            return self.subset(range(len(self))[position])
        index = int(self.indices[position])
        shard = int(np.searchsorted(self._starts, index, side="right") - 1)
        file = self.manifest["shards"][shard]["file"]
        with _open_readonly(self.path / file).begin() as txn:
            data = txn.get(str(index - int(self._starts[shard])).encode())
        if data is None:
            raise ValueError(f"{self.path}: structure {index} is missing from {file}")
        try:
            return decode(data)
        except (ValueError, KeyError, json.JSONDecodeError) as error:
            raise ValueError(f"{self.path}: structure {index} cannot be decoded ({error})") from None

    def __iter__(self) -> Iterator[LabelledStructure]:
        for position in range(len(self)):
            yield self[position]

