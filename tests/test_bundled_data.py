"""The bundled PBE/SCAN water clusters: present, labelled, linked by struct_id."""

import numpy as np
import pytest

from fidelity_adapters.bundled import WATER_CLUSTERS, water_clusters
from fidelity_adapters.splits import paper_split

pytestmark = pytest.mark.skipif(not WATER_CLUSTERS.exists(), reason="bundled data not generated yet")


def test_bundled_clusters_have_both_fidelities_on_shared_geometries():
    structures = water_clusters()
    pbe = {s.info["struct_id"]: s for s in structures if s.fidelity == "PBE"}
    scan = {s.info["struct_id"]: s for s in structures if s.fidelity == "SCAN"}
    assert len(pbe) == len(scan) == 300
    assert set(scan) <= set(pbe)
    for sid, s in scan.items():
        np.testing.assert_allclose(s.positions, pbe[sid].positions, atol=1e-6)
        assert s.has_energy and np.isfinite(s.forces).all()
    # PBE and SCAN total energies differ by much more than the spread of either
    gap = np.mean([(scan[k].energy - pbe[k].energy) / len(scan[k]) for k in scan])
    assert abs(gap) > 0.01


def test_paper_split_of_bundled_data_keeps_test_out_of_training():
    structures = water_clusters()
    split = paper_split(structures, "PBE", "SCAN", hifi_fraction=0.1, seed=0)
    sid = lambda ids: {structures[k].info["struct_id"] for k in ids}  # noqa: E731
    test = sid(split.test)
    assert not test & (sid(split.lofi_train) | sid(split.hifi_train) | sid(split.validation))
    n_geometries = len(sid(range(len(structures))))
    assert len(split.hifi_train) == round(0.1 * n_geometries)
    assert all(structures[k].fidelity == "SCAN" for k in split.test + split.validation + split.hifi_train)
