"""Labelled structures at named fidelities, from extxyz files, ASE Atoms or pymatgen.

Every source is turned into `LabelledStructure`: geometry, a fidelity name and whatever
labels exist. A missing label is NaN energy / None forces / None stress, never zero, so the
loss can mask it per structure. Each structure carries a `label` (file and frame) that error
messages use to point at the structure at fault.
"""

from __future__ import annotations

import gzip
import io
import itertools
import os
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import numpy as np
from ase import Atoms
from ase.io import read

from .neighbors import neighbor_list_and_closest

MIN_DISTANCE = 0.1  # Angstrom; closer atoms are an input error, not physics


@dataclass
class LabelledStructure:
    numbers: np.ndarray
    positions: np.ndarray
    cell: np.ndarray
    pbc: np.ndarray
    fidelity: str
    energy: float = float("nan")
    forces: np.ndarray | None = None
    stress: np.ndarray | None = None  # 3x3, eV/A^3, ASE sign convention
    label: str = "structure"
    info: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.numbers)

    @property
    def has_energy(self) -> bool:
        return bool(np.isfinite(self.energy))

    def to_atoms(self) -> Atoms:
        atoms = Atoms(numbers=self.numbers, positions=self.positions, cell=self.cell, pbc=self.pbc)
        atoms.info.update(self.info)
        atoms.info["fidelity"] = self.fidelity
        return atoms


def _stress_matrix(stress) -> np.ndarray | None:
    if stress is None:
        return None
    stress = np.asarray(stress, dtype=float)
    if stress.shape == (6,):
        xx, yy, zz, yz, xz, xy = stress
        stress = np.array([[xx, xy, xz], [xy, yy, yz], [xz, yz, zz]])
    return stress.reshape(3, 3)


def from_atoms(atoms: Atoms, fidelity: str | None = None, label: str = "structure") -> LabelledStructure:
    """Convert one ASE Atoms; labels come from its calculator results or info/arrays."""
    results = dict(atoms.calc.results) if atoms.calc is not None else {}
    energy = results.get("energy", atoms.info.get("energy", atoms.info.get("REF_energy", np.nan)))
    forces = results.get("forces", atoms.arrays.get("forces", atoms.arrays.get("REF_forces")))
    stress = results.get("stress", atoms.info.get("stress"))
    name = fidelity or atoms.info.get("fidelity")
    if name is None:
        raise ValueError(f"{label}: no fidelity given (pass fidelity=... or set atoms.info['fidelity'])")
    info = {k: v for k, v in atoms.info.items() if k not in ("energy", "stress", "fidelity")}
    structure = LabelledStructure(
        numbers=np.asarray(atoms.numbers, dtype=np.int64),
        positions=np.asarray(atoms.positions, dtype=np.float64),
        cell=np.asarray(atoms.cell.array, dtype=np.float64),
        pbc=np.asarray(atoms.pbc, dtype=bool),
        fidelity=str(name),
        energy=float(energy) if energy is not None else float("nan"),
        forces=None if forces is None else np.asarray(forces, dtype=np.float64),
        stress=_stress_matrix(stress),
        label=label,
        info=info,
    )
    check_labels(structure)
    return structure


def check_labels(structure: LabelledStructure) -> None:
    """An infinite label is an error, never a missing one (NaN energy = no energy label)."""
    s = structure
    if np.isinf(s.energy):
        raise ValueError(f"{s.label}: energy is {s.energy}; leave it out (or NaN) if the structure has no energy label")
    for name, value in (("forces", s.forces), ("stress", s.stress)):
        if value is not None and np.isinf(value).any():
            raise ValueError(f"{s.label}: {name} contain infinite values")


def from_pymatgen(
    structure,
    fidelity: str,
    energy: float = float("nan"),
    forces=None,
    stress=None,
    label: str = "structure",
) -> LabelledStructure:
    """Convert a pymatgen Structure or Molecule with labels given alongside."""
    from pymatgen.io.ase import AseAtomsAdaptor

    atoms = AseAtomsAdaptor.get_atoms(structure)
    atoms.calc = None
    result = from_atoms(atoms, fidelity=fidelity, label=label)
    result.energy = float(energy)
    result.forces = None if forces is None else np.asarray(forces, dtype=np.float64)
    result.stress = _stress_matrix(stress)
    return result


def stream_frames(path: Path, every: int, limit: int | None, start: int = 0) -> Iterator[tuple[int, Atoms]]:
    """Stream extxyz frames one at a time (ASE's reader indexes the whole file first, which
    takes minutes on the large public water sets); parse only the frames kept. A truncated or
    corrupt file is a ValueError naming the file and frame."""
    opener = gzip.open if path.suffix == ".gz" else open
    taken = 0
    index = 0
    try:
        with opener(path, "rt") as handle:
            for index in itertools.count():
                header = handle.readline()
                if not header.strip():
                    return
                try:
                    n_atoms = int(header)
                except ValueError:
                    raise ValueError(f"{path.name}:{index}: expected an atom count, found {header.strip()[:40]!r}") from None
                lines = [header, *(handle.readline() for _ in range(n_atoms + 1))]
                if "" in lines[1:]:  # readline gives "" only at the end of the file
                    raise ValueError(f"{path.name}:{index}: the file ends inside this frame ({n_atoms} atoms announced)")
                if index < start or (index - start) % every:
                    continue
                try:
                    atoms = read(io.StringIO("".join(lines)), format="extxyz")
                except Exception as error:  # ASE raises several types for a malformed frame
                    raise ValueError(f"{path.name}:{index}: cannot parse the frame ({type(error).__name__}: {error})") from None
                yield index, atoms
                taken += 1
                if limit is not None and taken >= limit:
                    return
    except (EOFError, gzip.BadGzipFile, UnicodeDecodeError, zlib.error) as error:
        raise ValueError(f"{path.name}: truncated or corrupt after frame {index} ({type(error).__name__}: {error})") from None


def read_structures(
    path: str | os.PathLike,
    fidelity: str | None = None,
    every: int = 1,
    limit: int | None = None,
    start: int = 0,
    default_fidelity: str | None = None,
) -> list[LabelledStructure]:
    """Read an extxyz file (plain or .gz); fidelity from the argument or each frame's info, or
    `default_fidelity` for a frame whose info has none.

    Frames `start`, `start + every`, ... are kept, at most `limit` of them, to subsample the
    large public sets without parsing them whole. Labels keep the frame's index in the file."""
    return list(iter_structures(path, fidelity, every, limit, start, default_fidelity))


def iter_structures(
    path: str | os.PathLike,
    fidelity: str | None = None,
    every: int = 1,
    limit: int | None = None,
    start: int = 0,
    default_fidelity: str | None = None,
) -> Iterator[LabelledStructure]:
    """read_structures one frame at a time, for files too large to hold (`prepare`)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"data file not found: {path}")
    if every < 1 or start < 0 or (limit is not None and limit < 1):
        raise ValueError(f"{path}: every must be >= 1, start >= 0 and limit >= 1 (got {every}, {start}, {limit})")
    for k, a in stream_frames(path, every, limit, start):
        name = fidelity or (None if "fidelity" in a.info else default_fidelity)
        yield from_atoms(a, fidelity=name, label=f"{path.name}:{k}")


def write_structures(structures: Iterable[LabelledStructure], path: str | os.PathLike) -> None:
    """Write structures with their fidelities and labels as extxyz (info energy / stress,
    arrays forces: what read_structures reads back); a missing label is left out."""
    from ase.io import write

    frames = []
    for s in structures:
        atoms = s.to_atoms()
        if s.has_energy:
            atoms.info["energy"] = s.energy
        if s.stress is not None:
            atoms.info["stress"] = s.stress
        if s.forces is not None:
            atoms.arrays["forces"] = s.forces
        frames.append(atoms)
    write(path, frames, format="extxyz")


def load_structures(source, fidelity: str | None = None) -> list[LabelledStructure]:
    """Accept a path, a list of paths, Atoms, pymatgen objects or LabelledStructures."""
    if isinstance(source, (str, os.PathLike)):
        return read_structures(source, fidelity)
    if isinstance(source, Atoms):
        return [from_atoms(source, fidelity)]
    out: list[LabelledStructure] = []
    for k, item in enumerate(source):
        if isinstance(item, LabelledStructure):
            out.append(item)
        elif isinstance(item, (str, os.PathLike)):
            out.extend(read_structures(item, fidelity))
        elif isinstance(item, Atoms):
            out.append(from_atoms(item, fidelity, label=f"structure {k}"))
        else:
            raise TypeError(
                f"structure {k}: cannot read {type(item).__name__}; give ASE Atoms, an extxyz path or "
                "use from_pymatgen(structure, fidelity, energy, forces) for pymatgen objects"
            )
    return out


def validate(structure: LabelledStructure, overlaps: bool = True) -> None:
    """Raise ValueError naming the structure if its geometry or labels are unusable.
    `overlaps=False` leaves the closest-pair check to a caller that builds a neighbour list
    anyway (check_closest_pair)."""
    s = structure
    if len(s) == 0:
        raise ValueError(f"{s.label}: structure has no atoms")
    if not np.all(np.isfinite(s.positions)):
        bad = np.flatnonzero(~np.isfinite(s.positions).all(axis=1))
        raise ValueError(f"{s.label}: positions of atoms {bad.tolist()} are NaN or infinite")
    if s.pbc.any() and not np.all(np.isfinite(s.cell)):
        raise ValueError(f"{s.label}: cell is NaN or infinite")
    if s.forces is not None and s.forces.shape != s.positions.shape:
        raise ValueError(f"{s.label}: forces have shape {s.forces.shape}, expected {s.positions.shape}")
    check_labels(s)
    if overlaps:
        check_closest_pair(s, *neighbor_list_and_closest(s.positions, s.cell, s.pbc, MIN_DISTANCE))


def check_closest_pair(structure: LabelledStructure, i, j, shifts, closest: int) -> None:
    """Raise naming the structure and the atoms if the shortest edge of a neighbour list
    (neighbor_list_and_closest) is shorter than MIN_DISTANCE."""
    if closest < 0:
        return
    s, k = structure, closest
    distance = float(np.linalg.norm(s.positions[j[k]] + shifts[k] @ s.cell - s.positions[i[k]]))
    if distance < MIN_DISTANCE:
        raise ValueError(
            f"{s.label}: atoms {int(i[k])} and {int(j[k])} are {distance:.3f} A apart (< {MIN_DISTANCE} A); "
            "check units and duplicated atoms"
        )


def chunks(items: Iterable, size: int) -> Iterator[list]:
    """Consecutive lists of `size` items (the last may be shorter), reading `items` once."""
    iterator = iter(items)
    while chunk := list(itertools.islice(iterator, size)):
        yield chunk


def fidelities_of(structures: Iterable[LabelledStructure]) -> list[str]:
    """Fidelity names in order of first appearance."""
    return list(dict.fromkeys(s.fidelity for s in structures))


def select(structures: Sequence[LabelledStructure], fidelity: str) -> list[LabelledStructure]:
    return [s for s in structures if s.fidelity == fidelity]


def geometry_id(structure: LabelledStructure, position: int) -> str:
    """Structures at different fidelities are one geometry when they share info['struct_id']."""
    return str(structure.info.get("struct_id", f"#{position}"))


def subsample_geometries(structures: Sequence[LabelledStructure], n: int) -> list[LabelledStructure]:
    """At most `n` geometries, evenly spread in file order, each with all its fidelity labels
    (subsampling frames instead would split the pairs that Delta-learning and the split
    protocol rely on)."""
    order = list(dict.fromkeys(geometry_id(s, k) for k, s in enumerate(structures)))
    if n >= len(order):
        return list(structures)
    kept = {order[int(i)] for i in np.linspace(0, len(order) - 1, n).round()}
    return [s for k, s in enumerate(structures) if geometry_id(s, k) in kept]
