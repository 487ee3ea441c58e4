"""MD through ASE (EMT stands in for a FidelityCalculator) and structure analysis of frames."""

from __future__ import annotations

import numpy as np
import pytest
from ase import Atoms
from ase.build import bulk
from ase.calculators.calculator import Calculator, all_changes
from ase.calculators.emt import EMT
from ase.io import read

from fidelity_adapters.physics.md import run_md
from fidelity_adapters.physics.structure_analysis import (
    angular_distribution,
    coordination_numbers,
    plot_angles,
    plot_coordination,
    plot_rdf,
    radial_distribution,
)

PNG = b"\x89PNG\r\n\x1a\n"


def copper(a: float = 3.61) -> Atoms:
    return bulk("Cu", "fcc", a=a, cubic=True).repeat(2)  # 32 atoms


class ScaledEMT(Calculator):
    """EMT with energies (and so forces and stress) multiplied by a factor: a second 'fidelity'."""

    implemented_properties = ("energy", "free_energy", "forces", "stress")

    def __init__(self, factor: float):
        super().__init__()
        self.factor = factor
        self.emt = EMT()

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        super().calculate(atoms, properties, system_changes)
        self.emt.calculate(self.atoms, properties, system_changes)
        self.results = {
            k: self.factor * np.asarray(v) for k, v in self.emt.results.items() if k in self.implemented_properties
        }


def final_positions(path) -> np.ndarray:
    return read(path, index=-1).positions


@pytest.fixture(scope="module")
def nve(tmp_path_factory):
    path = tmp_path_factory.mktemp("md") / "nve.extxyz"
    return run_md(copper(), EMT(), "nve", temperature_K=300, timestep_fs=1.0, steps=200, interval=10,
                  trajectory=path, progress=False)


def test_nve_conserves_energy(nve):
    assert nve.n_steps == 200
    for values in (nve.times_ps, nve.total_energy_per_atom, nve.potential_energy_per_atom,
                   nve.temperature_K, nve.volume_per_atom):
        assert values.shape == (21,)
    np.testing.assert_allclose(nve.times_ps, np.arange(21) * 0.01)
    assert abs(nve.drift_mev_per_atom_per_ps) < 1.0
    assert 0 < nve.max_deviation_mev_per_atom < 1.0
    assert 200 < nve.temperature_K[0] < 400  # Maxwell-Boltzmann start
    assert nve.potential_energy_per_atom[-1] > nve.potential_energy_per_atom[0] + 0.01  # energy exchange happened
    np.testing.assert_allclose(nve.volume_per_atom, 3.61**3 / 4)


def test_nve_trajectory_file(nve):
    frames = read(nve.trajectory, index=":")
    assert len(frames) == 21
    assert [f.info["step"] for f in frames] == list(range(0, 201, 10))
    np.testing.assert_allclose([f.info["time_ps"] for f in frames], nve.times_ps)
    np.testing.assert_allclose([f.get_potential_energy() / 32 for f in frames], nve.potential_energy_per_atom)
    assert frames[-1].get_forces().shape == (32, 3)
    r, g = radial_distribution(nve.trajectory, rmax=4.0, nbins=80)  # a path is accepted as frames
    assert abs(r[np.argmax(g)] - 3.61 / np.sqrt(2)) < 0.15


class FailingEMT(EMT):
    """EMT that dies after a number of evaluations, like a run killed mid-way."""

    def __init__(self, calls: int):
        super().__init__()
        self.calls = calls

    def calculate(self, *args, **kwargs):
        self.calls -= 1
        if self.calls < 0:
            raise RuntimeError("killed")
        super().calculate(*args, **kwargs)


def test_interrupted_run_leaves_readable_trajectory(tmp_path):
    path = tmp_path / "killed.extxyz"
    with pytest.raises(RuntimeError, match="killed"):
        run_md(copper(), FailingEMT(26), "nve", steps=100, interval=10, trajectory=path, progress=False)
    assert [f.info["step"] for f in read(path, index=":")] == [0, 10, 20]


def test_nvt_langevin_heats_to_target():
    result = run_md(copper(), EMT(), "nvt", temperature_K=300, steps=200, interval=5, friction_per_fs=0.05,
                    initialize_velocities=False, progress=False)  # starts at rest: only the thermostat heats
    assert result.temperature_K[0] == 0
    assert 150 < result.temperature_K[len(result.temperature_K) // 2:].mean() < 450
    assert result.drift_mev_per_atom_per_ps is None and result.max_deviation_mev_per_atom is None


def test_nvt_seeds(tmp_path):
    runs = {}
    for name, seed in (("a", 1), ("b", 1), ("c", 2)):
        run_md(copper(), EMT(), "nvt", steps=30, interval=30, seed=seed, trajectory=tmp_path / f"{name}.extxyz",
               progress=False)
        runs[name] = final_positions(tmp_path / f"{name}.extxyz")
    np.testing.assert_array_equal(runs["a"], runs["b"])
    assert np.abs(runs["a"] - runs["c"]).max() > 1e-3


def test_nvt_nose_hoover():
    result = run_md(copper(), EMT(), "nvt", thermostat="nose-hoover", temperature_K=300, steps=100, interval=5,
                    friction_per_fs=0.05, progress=False)
    assert 100 < result.temperature_K[10:].mean() < 500


@pytest.mark.parametrize("thermostat", ["langevin", "nose-hoover"])
def test_npt_pressure_compresses(thermostat):
    def mean_volume(pressure_gpa):
        result = run_md(copper(), EMT(), "npt", thermostat=thermostat, temperature_K=300, steps=100, interval=5,
                        pressure_gpa=pressure_gpa, barostat_time_fs=100.0, friction_per_fs=0.02, progress=False)
        assert result.volume_per_atom[0] == pytest.approx(3.61**3 / 4)
        return result.volume_per_atom[4:].mean()

    # Cu's bulk modulus is ~140 GPa: 10 GPa shrinks the volume by ~7 %
    assert mean_volume(10.0) < 0.97 * mean_volume(0.0)


def test_calculators_give_different_trajectories(tmp_path):
    for name, calc in (("emt", EMT()), ("emt_again", EMT()), ("scaled", ScaledEMT(1.5))):
        run_md(copper(), calc, "nve", steps=40, interval=40, trajectory=tmp_path / f"{name}.extxyz", progress=False)
    emt, again, scaled = (final_positions(tmp_path / f"{n}.extxyz") for n in ("emt", "emt_again", "scaled"))
    np.testing.assert_allclose(emt, again)
    assert np.abs(emt - scaled).max() > 1e-3


def test_input_atoms_unchanged():
    atoms = copper()
    atoms.rattle(0.05, seed=3)
    before = atoms.copy()
    run_md(atoms, EMT(), "npt", steps=5, interval=5, barostat_time_fs=50.0, progress=False)
    assert atoms.calc is None
    np.testing.assert_array_equal(atoms.positions, before.positions)
    np.testing.assert_array_equal(atoms.cell.array, before.cell.array)
    np.testing.assert_array_equal(atoms.get_momenta(), np.zeros((32, 3)))


def test_md_errors():
    with pytest.raises(ValueError, match="nve, nvt, npt"):
        run_md(copper(), EMT(), "nph", steps=1, progress=False)
    with pytest.raises(ValueError, match="langevin, nose-hoover"):
        run_md(copper(), EMT(), "nvt", thermostat="berendsen", steps=1, progress=False)
    cluster = copper()
    cluster.pbc = False
    with pytest.raises(ValueError, match="periodic"):
        run_md(cluster, EMT(), "npt", steps=1, progress=False)
    run_md(cluster, EMT(), "nvt", steps=1, progress=False)  # a cluster is fine at constant volume


def test_rdf_fcc_peaks_and_normalisation():
    a = 3.6
    r, g = radial_distribution(bulk("Cu", "fcc", a=a, cubic=True).repeat(3), rmax=6.0, nbins=200)
    width = r[1] - r[0]
    shells = r[g > 0]
    assert abs(shells[0] - a / np.sqrt(2)) <= width
    assert abs(shells[1] - a) <= width
    assert np.all(g[r < a / np.sqrt(2) - width] == 0)
    # integrating rho g(r) 4 pi r^2 dr over the first shell counts its 12 neighbours
    rho = 4 / a**3
    first = r < (a / np.sqrt(2) + a) / 2
    shell_volumes = 4 / 3 * np.pi * ((r[first] + width / 2) ** 3 - (r[first] - width / 2) ** 3)
    assert np.sum(rho * g[first] * shell_volumes) == pytest.approx(12)


def test_rdf_small_cell_matches_supercell():
    primitive = bulk("Cu", "fcc", a=3.6)  # one atom, cell far smaller than 2 * rmax
    _, g_small = radial_distribution([primitive, primitive], rmax=6.0, nbins=113)
    _, g_big = radial_distribution(primitive.repeat(4), rmax=6.0, nbins=113)
    np.testing.assert_allclose(g_small, g_big, atol=1e-9)
    assert g_small.max() > 1


def test_rdf_ideal_gas():
    rng = np.random.default_rng(0)
    gas = Atoms("Ar1000", positions=rng.uniform(0, 15.0, (1000, 3)), cell=[15.0] * 3, pbc=True)
    r, g = radial_distribution(gas, rmax=6.0, nbins=30)
    assert abs(g[r > 3].mean() - 1) < 0.05
    assert np.all(np.abs(g[r > 3] - 1) < 0.2)


def test_partial_rdf_rocksalt():
    a = 5.64
    salt = bulk("NaCl", "rocksalt", a=a)
    r, g_nacl = radial_distribution(salt, rmax=6.0, nbins=200, elements=("Na", "Cl"))
    _, g_nana = radial_distribution(salt, rmax=6.0, nbins=200, elements=("Na", "Na"))
    width = r[1] - r[0]
    assert abs(r[g_nacl > 0][0] - a / 2) <= width
    assert abs(r[g_nana > 0][0] - a / np.sqrt(2)) <= width


def test_rdf_errors():
    cluster = bulk("Cu", "fcc", a=3.6, cubic=True)
    cluster.pbc = False
    with pytest.raises(ValueError, match="periodic"):
        radial_distribution(cluster)
    with pytest.raises(ValueError, match="elements"):
        radial_distribution(bulk("Cu", "fcc", a=3.6), elements=("O", "O"))


def test_angles_diamond_silicon():
    theta, p = angular_distribution(bulk("Si", "diamond", a=5.43, cubic=True), "Si", "Si", cutoff=2.85, nbins=180)
    width = theta[1] - theta[0]
    assert abs(theta[np.argmax(p)] - 109.47) <= width
    assert np.sum(p) * width == pytest.approx(1.0)
    assert np.count_nonzero(p) == 1


def test_angles_select_elements():
    # around Na, the six Cl neighbours make 12 right angles and 3 straight ones
    theta, p = angular_distribution(bulk("NaCl", "rocksalt", a=5.64), "Na", "Cl", cutoff=3.0, nbins=36)
    width = theta[1] - theta[0]
    assert p[np.argmin(abs(theta - 92.5))] * width == pytest.approx(0.8)
    assert p[-1] * width == pytest.approx(0.2)
    with pytest.raises(ValueError, match="triplets"):
        angular_distribution(bulk("NaCl", "rocksalt", a=5.64), "Na", "Na", cutoff=3.0)


def test_coordination_numbers():
    assert coordination_numbers(bulk("Si", "diamond", a=5.43, cubic=True), cutoff=2.85) == {4: 1.0}
    assert coordination_numbers([bulk("Cu", "fcc", a=3.6)] * 2, cutoff=3.0) == {12: 1.0}
    salt = bulk("NaCl", "rocksalt", a=5.64)
    assert coordination_numbers(salt, cutoff=3.0, element="Na") == {6: 1.0}
    assert coordination_numbers(salt, cutoff=3.0, element="Na", neighbor="Cl") == {6: 1.0}
    assert coordination_numbers(salt, cutoff=3.0, element="Na", neighbor="Na") == {0: 1.0}  # next Na at 3.99 A
    vacancy = bulk("Cu", "fcc", a=3.6, cubic=True).repeat(2)
    del vacancy[0]  # its 12 neighbours lose one each
    assert coordination_numbers(vacancy, cutoff=3.0) == pytest.approx({11: 12 / 31, 12: 19 / 31})


def test_plots_write_png(tmp_path):
    r, g = radial_distribution(bulk("Cu", "fcc", a=3.6), rmax=5.0, nbins=50)
    theta, p = angular_distribution(bulk("Si", "diamond", a=5.43), "Si", "Si", cutoff=2.85)
    paths = [
        plot_rdf(r, g, tmp_path / "rdf.png", label="Cu"),
        plot_angles(theta, p, tmp_path / "angles.png"),
        plot_coordination({4: 0.9, 5: 0.1}, tmp_path / "cn.png"),
    ]
    for path in paths:
        assert path.read_bytes()[:8] == PNG
