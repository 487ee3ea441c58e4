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
        labeller.label = lambda atoms, fidelity, level: calls.append(atoms.info["struct_id"]) or original(atoms, fidelity, labeller_level)
        path = tmp_path / "out.extxyz"
        label_into([h2], "PBE", path)
        second = h2.copy()
        second.info["struct_id"] = 1
        label_into([h2, second], "PBE", path)  # struct 0 is already there: only 1 is computed
    finally:
        labeller.label = original
    assert calls == [0, 1]
    assert [a.info["struct_id"] for a in read(path, ":")] == [0, 1]


def _water_monomer():
    from ase.build import molecule

    water = molecule("H2O")
    water.positions += np.random.default_rng(0).normal(scale=0.05, size=water.positions.shape)  # forces far from zero
    water.info["struct_id"] = 0
    return water


def test_convergence_check_fails_on_scan_without_grid_response_and_passes_at_bundled_settings():
    pytest.importorskip("pyscf", reason="the labeller needs the [pyscf] extra")
    from dataclasses import replace

    from fidelity_adapters.pyscf_labeller import LEVELS, check_convergence

    water = _water_monomer()
    coarse = replace(LEVELS["SCAN"], grid_level=3, grid_response=False)
    bad = check_convergence([water], "SCAN", coarse)
    good = check_convergence([water], "SCAN")
    assert bad.reference == good.reference  # same finer grid with response
    assert not bad.passed and bad.force_mae > 0.005
    assert good.passed, good.report()
    assert "PASS" in good.report() and "FAIL" in bad.report()


def test_label_command_checks_and_labels(tmp_path, capsys):
    pytest.importorskip("pyscf", reason="the labeller needs the [pyscf] extra")
    from ase.io import write

    from fidelity_adapters.cli import main

    h2 = [__import__("ase").Atoms("H2", positions=[[0, 0, 0], [0, 0, d]]) for d in (0.7, 0.8)]
    write(tmp_path / "h2.extxyz", h2)
    tiny = ["--basis", "sto-3g", "--grid", "1"]
    assert main(["label", str(tmp_path / "h2.extxyz"), "--fidelity", "PBE", "--check-convergence", "--sample", "1", *tiny]) in (0, 1)
    assert "against PBE/sto-3g" in capsys.readouterr().out
    assert main(["label", str(tmp_path / "h2.extxyz"), "--fidelity", "PBE", "--out", str(tmp_path / "out.extxyz"), *tiny]) == 0
    out = read(tmp_path / "out.extxyz", ":")
    assert [a.info["struct_id"] for a in out] == [0, 1] and all(a.info["fidelity"] == "PBE" for a in out)
    assert main(["label", str(tmp_path / "h2.extxyz"), "--fidelity", "B3LYP", "--out", str(tmp_path / "x.extxyz")]) == 2
