"""Reading data from every supported source, and a clear error for each kind of bad input."""

import gzip

import numpy as np
import pytest
from ase import Atoms
from ase.calculators.singlepoint import SinglePointCalculator
from ase.io import write
from conftest import rattled_si, water_dimer

from fidelity_adapters import from_atoms, from_pymatgen, load_structures, read_structures, train
from fidelity_adapters.data import validate
from fidelity_adapters.training import TrainConfig


def labelled(atoms, fidelity, energy=-10.0, forces=True, stress=False):
    atoms = atoms.copy()
    atoms.info["fidelity"] = fidelity
    results = {"energy": energy}
    if forces:
        results["forces"] = np.full((len(atoms), 3), 0.1)
    if stress:
        results["stress"] = np.arange(6, dtype=float) * 0.01
    atoms.calc = SinglePointCalculator(atoms, **results)
    return atoms


def test_extxyz_plain_and_gzip_round_trip(tmp_path):
    frames = [labelled(water_dimer(), "PBE", -1000.0), labelled(water_dimer(1), "SCAN", -1001.0)]
    write(tmp_path / "a.extxyz", frames)
    with gzip.open(tmp_path / "a.extxyz.gz", "wt") as handle:
        write(handle, frames, format="extxyz")
    for name in ("a.extxyz", "a.extxyz.gz"):
        structures = read_structures(tmp_path / name)
        assert [s.fidelity for s in structures] == ["PBE", "SCAN"]
        assert structures[1].energy == pytest.approx(-1001.0)
        assert structures[0].forces.shape == (6, 3)
        assert structures[1].label == f"{name}:1"


def test_stress_voigt_becomes_symmetric_matrix():
    s = from_atoms(labelled(rattled_si(), "PBE", stress=True))
    assert s.stress.shape == (3, 3)
    np.testing.assert_allclose(s.stress, s.stress.T)
    assert s.stress[1, 2] == pytest.approx(0.03)


def test_missing_labels_are_nan_or_none_not_zero():
    atoms = water_dimer()
    atoms.info["fidelity"] = "CCSD(T)"
    s = from_atoms(atoms)
    assert np.isnan(s.energy) and not s.has_energy and s.forces is None and s.stress is None


def test_fidelity_argument_and_missing_fidelity():
    atoms = water_dimer()
    del atoms.info["fidelity"]
    assert from_atoms(atoms, fidelity="PBE").fidelity == "PBE"
    with pytest.raises(ValueError, match="no fidelity"):
        from_atoms(atoms, label="frame 7")


def test_pymatgen_structure_and_list_sources():
    from pymatgen.core import Lattice, Structure

    structure = Structure(Lattice.cubic(5.43), ["Si", "Si"], [[0, 0, 0], [0.25, 0.25, 0.25]])
    s = from_pymatgen(structure, "PBE", energy=-10.8, forces=np.zeros((2, 3)))
    assert s.pbc.all() and s.energy == -10.8 and len(s) == 2
    mixed = load_structures([water_dimer(), s], fidelity=None)
    assert len(mixed) == 2
    with pytest.raises(TypeError, match="structure 0"):
        load_structures([structure])


def _train(potential, structures):
    return train(potential, structures, structures, TrainConfig(max_epochs=1, progress=False))


def test_unknown_element_is_named(water_potential):
    atoms = water_dimer()
    atoms[0].symbol = "N"
    with pytest.raises(ValueError, match=r"\['N'\] unknown to the model, which knows \['H', 'O'\]"):
        water_potential.graph(atoms)


def test_empty_dataset(water_potential):
    with pytest.raises(ValueError, match="training set is empty"):
        _train(water_potential, [])


def test_atoms_too_close_names_structure_and_atoms(water_potential):
    atoms = water_dimer()
    atoms.positions[4] = atoms.positions[1] + [0.05, 0, 0]
    with pytest.raises(ValueError, match=r"clash:.*atoms 1 and 4 are 0.050 A apart"):
        water_potential.graph(from_atoms(atoms, label="clash"))
    with pytest.raises(ValueError, match=r"clash:.*atoms 1 and 4 are 0.050 A apart"):
        validate(from_atoms(atoms, label="clash"))  # without a graph: its own neighbour list


def test_atoms_too_close_through_periodic_image(si_potential):
    atoms = Atoms("Si2", positions=[[0, 0, 0], [4.98, 0, 0]], cell=np.eye(3) * 5.0, pbc=True)
    atoms.info["fidelity"] = "PBE"
    with pytest.raises(ValueError, match="0.020 A apart"):
        si_potential.graph(atoms)


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_non_finite_positions(water_potential, bad):
    atoms = water_dimer()
    atoms.positions[2, 1] = bad
    with pytest.raises(ValueError, match=r"frame 3: positions of atoms \[2\] are NaN or infinite"):
        water_potential.graph(from_atoms(atoms, label="frame 3"))


def test_forces_of_wrong_shape(water_potential):
    s = from_atoms(water_dimer(), label="bad forces")
    s.forces = np.zeros((2, 3))
    with pytest.raises(ValueError, match="bad forces: forces have shape"):
        water_potential.graph(s)


def test_missing_file():
    with pytest.raises(FileNotFoundError, match="nowhere.extxyz"):
        read_structures("nowhere.extxyz")


def test_every_and_limit_subsample_a_file(tmp_path):
    frames = [labelled(water_dimer(k), "PBE", -1000.0 - k) for k in range(10)]
    write(tmp_path / "many.extxyz", frames)
    picked = read_structures(tmp_path / "many.extxyz", every=3, limit=3)
    assert [s.energy for s in picked] == [-1000.0, -1003.0, -1006.0]
    assert [s.label for s in picked] == ["many.extxyz:0", "many.extxyz:3", "many.extxyz:6"]
    later = read_structures(tmp_path / "many.extxyz", start=7, every=2)
    assert [s.label for s in later] == ["many.extxyz:7", "many.extxyz:9"]
    with pytest.raises(ValueError, match="many.extxyz: every must be >= 1"):
        read_structures(tmp_path / "many.extxyz", every=0)


def test_corrupt_extxyz_names_the_frame(tmp_path):
    write(tmp_path / "bad.extxyz", [labelled(water_dimer(), "PBE")] * 2)
    text = (tmp_path / "bad.extxyz").read_text().splitlines()
    text[8] = "garbage"  # the second frame's atom count
    (tmp_path / "bad.extxyz").write_text("\n".join(text) + "\n")
    with pytest.raises(ValueError, match=r"bad.extxyz:1: expected an atom count"):
        read_structures(tmp_path / "bad.extxyz")


def test_truncated_or_corrupt_files_name_file_and_frame(tmp_path):
    write(tmp_path / "whole.extxyz", [labelled(water_dimer(seed=k), "PBE") for k in range(3)])
    text = (tmp_path / "whole.extxyz").read_bytes()
    (tmp_path / "cut.extxyz").write_bytes(text[: text.rindex(b"\n", 0, len(text) - 300) + 1])  # ends inside frame 2
    with pytest.raises(ValueError, match=r"cut.extxyz:2: the file ends inside this frame"):
        read_structures(tmp_path / "cut.extxyz")
    packed = gzip.compress(text)
    (tmp_path / "cut.extxyz.gz").write_bytes(packed[: len(packed) // 2])
    with pytest.raises(ValueError, match=r"cut.extxyz.gz: truncated or corrupt after frame \d"):
        read_structures(tmp_path / "cut.extxyz.gz")
    (tmp_path / "junk.extxyz.gz").write_bytes(b"not gzip at all" * 10)
    with pytest.raises(ValueError, match=r"junk.extxyz.gz: truncated or corrupt after frame 0"):
        read_structures(tmp_path / "junk.extxyz.gz")
    lines = text.decode().splitlines()
    lines[3] = "H 0.0 zero 0.0 0.1 0.1 0.1"  # a coordinate that is not a number
    (tmp_path / "word.extxyz").write_text("\n".join(lines) + "\n")
    with pytest.raises(ValueError, match=r"word.extxyz:0: cannot parse the frame"):
        read_structures(tmp_path / "word.extxyz")


def test_subsampling_by_geometry_keeps_every_label_of_a_kept_geometry():
    from conftest import paired_cu

    from fidelity_adapters.data import subsample_geometries

    data = paired_cu(10)
    kept = subsample_geometries(data, 4)
    ids = [s.info["struct_id"] for s in kept]
    assert sorted(set(ids)) == [0, 3, 6, 9]  # evenly spread over the file
    assert all(ids.count(g) == 2 for g in set(ids))  # both fidelities of each
    assert subsample_geometries(data, 50) == data
