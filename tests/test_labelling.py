"""The project's own data pipeline: TIP3P cluster sampler and PySCF labeller."""

import numpy as np
import pytest
from ase.io import read

from fidelity_adapters.water_clusters import sample_water_clusters


def test_sampler_gives_bound_rattled_clusters():
    clusters = sample_water_clusters(4, sizes=(2, 3), frames_per_run=2, steps_between_frames=5, seed=1)
    assert [len(c) for c in clusters][:2] == [6, 6]
    assert [c.info["struct_id"] for c in clusters] == [0, 1, 2, 3]
    for c in clusters:
        d = c.get_all_distances()
        np.fill_diagonal(d, np.inf)
        assert 0.8 < d.min() < 1.1  # O-H bonds, moved off the rigid 0.9572 A by the rattle
        assert abs(np.linalg.norm(c.get_center_of_mass())) < 1e-8


def test_labeller_appends_and_resumes(tmp_path):
    pytest.importorskip("pyscf", reason="the labeller needs the [pyscf] extra")
    from ase import Atoms

    from fidelity_adapters.pyscf_labeller import DFTLevel, label, label_into

    h2 = Atoms("H2", positions=[[0, 0, 0], [0, 0, 0.6]])
    h2.info["struct_id"] = 0
    labelled = label(h2, "PBE", DFTLevel("PBE", basis="sto-3g", grid_level=1))
    forces = labelled.get_forces()
    assert forces[0, 2] == pytest.approx(-forces[1, 2])  # compressed bond pushes atoms apart
    assert forces[0, 2] < 0
    assert labelled.info["fidelity"] == "PBE"

    import fidelity_adapters.pyscf_labeller as labeller

    calls = []
    original = labeller.label
    labeller_level = DFTLevel("PBE", basis="sto-3g", grid_level=1)
    try:
        labeller.label = lambda atoms, fidelity: calls.append(atoms.info["struct_id"]) or original(atoms, fidelity, labeller_level)
        path = tmp_path / "out.extxyz"
        label_into([h2], "PBE", path)
        second = h2.copy()
        second.info["struct_id"] = 1
        label_into([h2, second], "PBE", path)  # struct 0 is already there: only 1 is computed
    finally:
        labeller.label = original
    assert calls == [0, 1]
    assert [a.info["struct_id"] for a in read(path, ":")] == [0, 1]
