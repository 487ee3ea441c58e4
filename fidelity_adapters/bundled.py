"""The bundled data set: (H2O)2-4 clusters with PBE and SCAN labels on every geometry, made by
examples/make_bundled_data.py with the project's own sampler and PySCF labeller."""

from __future__ import annotations

from pathlib import Path

from .data import LabelledStructure, read_structures

WATER_CLUSTERS = Path(__file__).parent / "data_files" / "water_clusters_pbe_scan.extxyz.gz"


def water_clusters() -> list[LabelledStructure]:
    if not WATER_CLUSTERS.exists():
        raise FileNotFoundError(f"bundled data missing at {WATER_CLUSTERS}; run examples/make_bundled_data.py")
    return read_structures(WATER_CLUSTERS)
