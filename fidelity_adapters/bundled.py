"""The bundled data set: (H2O)2-4 clusters with PBE and r2SCAN labels on every geometry and SCAN
on a subset, made by examples/make_bundled_data.py with the project's own sampler and PySCF
labeller, at settings whose convergence was checked (the numbers travel with the data)."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Iterator

import numpy as np

from .data import LabelledStructure, read_structures

DATA_FILES = Path(__file__).parent / "data_files"
WATER_CLUSTERS = DATA_FILES / "water_clusters.extxyz.gz"
WATER_CLUSTERS_CONVERGENCE = DATA_FILES / "water_clusters.convergence.json"


def water_clusters() -> list[LabelledStructure]:
    if not WATER_CLUSTERS.exists():
        raise FileNotFoundError(f"bundled data missing at {WATER_CLUSTERS}; run examples/make_bundled_data.py")
    return read_structures(WATER_CLUSTERS)


def rattled_water_clusters(n: int, scale: float = 0.02, seed: int = 0) -> Iterator[LabelledStructure]:
    """n copies of the bundled clusters in turn, each rattled by `scale` A (Gaussian), labels
    kept: a data set of any size for memory and speed benchmarks (not for accuracy)."""
    base = water_clusters()
    rng = np.random.default_rng(seed)
    for k in range(n):
        s = base[k % len(base)]
        yield replace(s, positions=s.positions + rng.normal(scale=scale, size=s.positions.shape), label=f"rattled {k}",
                      info={"struct_id": k})  # fmt: skip


def label_convergence() -> dict:
    """Per fidelity: the labels' differences from a finer grid with grid response, on a sample."""
    return json.loads(WATER_CLUSTERS_CONVERGENCE.read_text())


def label_noise_line(fidelity: str) -> str:
    """One sentence a reader needs beside an MAE: how far the labels themselves are from converged."""
    check = label_convergence()[fidelity]
    return (
        f"{fidelity} labels vs a finer grid with grid response ({len(check['atoms'])} clusters): "
        f"{1000 * check['energy_mae_eV_per_atom']:.3f} meV/atom, {1000 * check['force_mae_eV_per_A']:.2f} meV/A "
        f"(largest {1000 * check['force_max_eV_per_A']:.2f}); settings {check['settings']}"
    )
