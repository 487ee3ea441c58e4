"""The split protocol of Ko & Ong (Fig. 2) for data where fidelities share structures.

Structures at different fidelities are the same geometry when they share
`info["struct_id"]`. Held out first: `holdout_fraction` of all geometries, chosen among those
that have a high-fidelity label, split equally into validation and test. Low-fidelity
training: every other geometry. High-fidelity training: `hifi_fraction` of *all* geometries,
drawn from the low-fidelity training geometries that have a high-fidelity label. No test
geometry is in any training set, at any fidelity.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from .data import LabelledStructure


@dataclass
class Split:
    lofi_train: list[int]
    hifi_train: list[int]
    validation: list[int]
    test: list[int]

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(asdict(self), indent=1))

    @classmethod
    def load(cls, path: str | Path) -> "Split":
        return cls(**json.loads(Path(path).read_text()))


def geometry_id(structure: LabelledStructure, position: int) -> str:
    return str(structure.info.get("struct_id", f"#{position}"))


def paper_split(
    structures: Sequence[LabelledStructure],
    lofi: str,
    hifi: str,
    hifi_fraction: float,
    seed: int,
    holdout_fraction: float = 0.2,
) -> Split:
    """Indices into `structures` for the four sets, reproducible from the seed."""
    by_geometry: dict[str, dict[str, int]] = {}
    for k, s in enumerate(structures):
        by_geometry.setdefault(geometry_id(s, k), {})[s.fidelity] = k
    geometries = sorted(by_geometry)
    with_hifi = [g for g in geometries if hifi in by_geometry[g]]
    rng = np.random.default_rng(seed)
    n_holdout = int(round(holdout_fraction * len(geometries)))
    n_hifi_train = int(round(hifi_fraction * len(geometries)))
    if n_holdout + n_hifi_train > len(with_hifi):
        raise ValueError(
            f"{len(with_hifi)} geometries have {hifi} labels, too few for {n_holdout} held out plus "
            f"{n_hifi_train} for training ({hifi_fraction:.0%} of {len(geometries)})"
        )
    if n_holdout < 2:
        raise ValueError("the held-out set needs at least 2 geometries (one validation, one test)")
    shuffled = [with_hifi[k] for k in rng.permutation(len(with_hifi))]
    held_out = shuffled[:n_holdout]
    hifi_train = shuffled[n_holdout : n_holdout + n_hifi_train]
    held = set(held_out)
    lofi_train = [g for g in geometries if g not in held and lofi in by_geometry[g]]
    half = len(held_out) // 2
    return Split(
        lofi_train=[by_geometry[g][lofi] for g in lofi_train],
        hifi_train=[by_geometry[g][hifi] for g in hifi_train],
        validation=[by_geometry[g][hifi] for g in held_out[:half]],
        test=[by_geometry[g][hifi] for g in held_out[half:]],
    )
