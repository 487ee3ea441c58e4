"""The bundled water clusters: present, labelled at three named levels on shared geometries,
with labels whose convergence check travels with them."""

import numpy as np
import pytest

from fidelity_adapters.bundled import WATER_CLUSTERS, label_convergence, label_noise_line, water_clusters
from fidelity_adapters.pyscf_labeller import ENERGY_TOLERANCE, FORCE_TOLERANCE, LEVELS
from fidelity_adapters.splits import paper_split

pytestmark = pytest.mark.skipif(not WATER_CLUSTERS.exists(), reason="bundled data not generated yet")


def by_level(structures, fidelity):
    return {s.info["struct_id"]: s for s in structures if s.fidelity == fidelity}


def test_bundled_clusters_share_geometries_across_levels():
    structures = water_clusters()
    pbe, r2scan, scan = (by_level(structures, f) for f in ("PBE", "r2SCAN", "SCAN"))
    assert len(pbe) == len(r2scan) == 300
    assert 0 < len(scan) < 300 and set(scan) <= set(r2scan) <= set(pbe)
    for level in (r2scan, scan):
        for sid, s in level.items():
            np.testing.assert_allclose(s.positions, pbe[sid].positions, atol=1e-6)
            assert s.has_energy and np.isfinite(s.forces).all()
    # the levels differ by much more than the spread of either
    for level in (r2scan, scan):
        gap = np.mean([(level[k].energy - pbe[k].energy) / len(level[k]) for k in level])
        assert abs(gap) > 0.01


def test_every_bundled_level_passed_its_convergence_check():
    checks = label_convergence()
    assert set(checks) == set(LEVELS)
    for fidelity, check in checks.items():
        assert check["passed"], fidelity
        assert check["energy_mae_eV_per_atom"] < ENERGY_TOLERANCE and check["force_mae_eV_per_A"] < FORCE_TOLERANCE
        assert "grid response" in check["reference"]
    assert "meV/A" in label_noise_line("r2SCAN")
    with pytest.raises(KeyError):
        label_noise_line("CCSD(T)")


def test_paper_split_of_bundled_data_keeps_test_out_of_training():
    structures = water_clusters()
    split = paper_split(structures, ["PBE", "SCAN"], "r2SCAN", hifi_fraction=0.1, seed=0)
    sid = lambda ids: {structures[k].info["struct_id"] for k in ids}  # noqa: E731
    test = sid(split.test)
    assert not test & (sid(split.lofi_train) | sid(split.hifi_train) | sid(split.validation))
    assert {structures[k].fidelity for k in split.lofi_train} == {"PBE", "SCAN"}
    n_geometries = len(sid(range(len(structures))))
    assert len(split.hifi_train) == round(0.1 * n_geometries)
    assert all(structures[k].fidelity == "r2SCAN" for k in split.test + split.validation + split.hifi_train)


def test_demo_trains_three_models_and_prints_the_label_noise(tmp_path, capsys):
    from fidelity_adapters.demo import run_demo

    results = run_demo(tmp_path, epochs=1)
    assert set(results) == {"mfi", "1fi", "mfi3"}
    assert results["mfi3"]["fidelities"] == ["PBE", "SCAN", "r2SCAN"]
    assert results["mfi3"]["n_train"] > results["mfi"]["n_train"] > results["1fi"]["n_train"]
    out = capsys.readouterr().out
    assert "Label noise" in out and "r2SCAN labels vs a finer grid" in out
