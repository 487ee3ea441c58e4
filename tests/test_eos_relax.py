"""Equation of state and relaxation with a plain ASE calculator (EMT or analytic)."""

from __future__ import annotations

import numpy as np
import pytest
from ase import Atoms
from ase.build import bulk, molecule
from ase.calculators.calculator import Calculator, all_changes
from ase.calculators.emt import EMT
from ase.io import read
from ase.units import GPa
from threadpoolctl import threadpool_limits

from fidelity_adapters.physics.eos import (
    SI_POLYMORPHS,
    EOSResult,
    eos_table,
    equation_of_state,
    plot_eos,
    silicon_polymorph,
)
from fidelity_adapters.physics.relax import relax

E0, V0, B0, BP = -3.2, 17.0, 100.0, 4.5  # eV/atom, Å^3/atom, GPa, dimensionless


@pytest.fixture(autouse=True, scope="module")
def single_blas_thread():
    """The cell filter takes 3x3 matrix logarithms: extra BLAS threads only spin on a busy machine."""
    with threadpool_limits(limits=1, user_api="blas"):
        yield


class MurnaghanCalculator(Calculator):
    """Energy depends only on volume per atom, through a Murnaghan form with known parameters."""

    implemented_properties = ["energy", "free_energy", "forces", "stress"]

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        super().calculate(atoms, properties, system_changes)
        n = len(self.atoms)
        v, b = self.atoms.get_volume() / n, B0 * GPa
        energy = E0 + b * v / BP * ((V0 / v) ** BP / (BP - 1) + 1) - V0 * b / (BP - 1)
        de_dv = -(b / BP) * ((V0 / v) ** BP - 1)  # = -pressure; ASE stress is +dE/dV isotropically
        self.results = {
            "energy": n * energy,
            "free_energy": n * energy,
            "forces": np.zeros((n, 3)),
            "stress": np.array([de_dv, de_dv, de_dv, 0.0, 0.0, 0.0]),
        }


def murnaghan_crystal() -> Atoms:
    """Two-atom (cubic bcc) cell a little off the analytic V0."""
    return bulk("Cu", "bcc", a=(2 * V0 * 1.05) ** (1 / 3), cubic=True)


def emt_energy_per_atom(a: float) -> float:
    atoms = bulk("Cu", "fcc", a=a)
    atoms.calc = EMT()
    return atoms.get_potential_energy() / len(atoms)


@pytest.fixture(scope="module")
def emt_cu_lattice() -> float:
    """EMT fcc Cu lattice constant from a dense, independent energy scan (2.5e-4 Å grid)."""
    grid = np.linspace(3.56, 3.62, 241)
    energies = [emt_energy_per_atom(a) for a in grid]
    lowest = int(np.argmin(energies))
    assert 0 < lowest < len(grid) - 1
    return float(grid[lowest])


def fake_result(name: str, e0: float, v0: float, b: float) -> EOSResult:
    return EOSResult(name, np.array([v0 - 1, v0, v0 + 1]), np.array([e0 + 0.1, e0, e0 + 0.1]), e0, v0, b, 4.0)


# ----------------------------------------------------------------------------- equation of state


def test_eos_recovers_analytic_murnaghan():
    atoms = murnaghan_crystal()
    result = equation_of_state(atoms, MurnaghanCalculator(), name="analytic")
    assert result.name == "analytic" and result.eos == "murnaghan"
    assert result.e0 == pytest.approx(E0, rel=0.01)
    assert result.v0 == pytest.approx(V0, rel=0.01)
    assert result.b_gpa == pytest.approx(B0, rel=0.01)
    assert result.b_prime == pytest.approx(BP, rel=0.01)
    assert result.volumes.shape == result.energies.shape == (11,)
    assert result.volumes[0] == pytest.approx(0.85 * atoms.get_volume() / 2)
    assert result.volumes[-1] == pytest.approx(1.15 * atoms.get_volume() / 2)


@pytest.mark.parametrize("form", ["birchmurnaghan", "sj"])
def test_eos_other_fit_forms(form):
    result = equation_of_state(murnaghan_crystal(), MurnaghanCalculator(), eos=form)
    assert result.eos == form
    assert result.v0 == pytest.approx(V0, rel=0.01)
    assert result.b_gpa == pytest.approx(B0, rel=0.01)
    assert (result.b_prime is None) == (form == "sj")


def test_eos_unknown_form_errors():
    with pytest.raises(ValueError, match="unknown equation of state 'murnaghn'.*birchmurnaghan"):
        equation_of_state(murnaghan_crystal(), MurnaghanCalculator(), eos="murnaghn")


def test_eos_emt_copper_matches_dense_scan_and_curvature(emt_cu_lattice):
    result = equation_of_state(bulk("Cu", "fcc", a=3.6), EMT(), name="Cu")
    assert result.v0 == pytest.approx(emt_cu_lattice**3 / 4, rel=0.01)
    # B = V d2E/dV2 at the minimum, by central differences in volume per atom.
    h = 0.01 * result.v0

    def energy_at(volume):
        return emt_energy_per_atom((4 * volume) ** (1 / 3))

    curvature = (energy_at(result.v0 + h) - 2 * energy_at(result.v0) + energy_at(result.v0 - h)) / h**2
    b_fd = result.v0 * curvature / GPa
    assert b_fd > 0
    assert result.b_gpa == pytest.approx(b_fd, rel=0.05)
    assert result.e0 == pytest.approx(min(result.energies), abs=2e-3)


@pytest.mark.parametrize("stretch", [1.25, 0.8], ids=["minimum-below-range", "minimum-above-range"])
def test_eos_minimum_outside_range_errors(stretch):
    atoms = bulk("Cu", "fcc", a=3.59 * stretch)
    with pytest.raises(ValueError, match=r"not inside the scanned volume range \(0.85, 1.15\)"):
        equation_of_state(atoms, EMT())


@pytest.mark.parametrize(
    "atoms",
    [molecule("H2O"), Atoms("Cu2", positions=[[0, 0, 0], [2.5, 0, 0]], cell=[5, 5, 5], pbc=False)],
    ids=["no-cell", "not-periodic"],
)
def test_eos_needs_periodic_cell(atoms):
    with pytest.raises(ValueError, match="periodic cell"):
        equation_of_state(atoms, EMT())


def test_eos_and_relax_leave_input_untouched():
    atoms = bulk("Cu", "fcc", a=3.7, cubic=True)
    atoms.rattle(0.05, seed=1)
    positions, cell = atoms.positions.copy(), atoms.cell.array.copy()
    equation_of_state(atoms, EMT(), volume_range=(0.8, 1.05))
    relax(atoms, EMT(), steps=2)
    assert atoms.calc is None
    assert np.array_equal(atoms.positions, positions)
    assert np.array_equal(atoms.cell.array, cell)


# ----------------------------------------------------------------------------- silicon polymorphs


def test_silicon_polymorphs():
    structures = {name: silicon_polymorph(name) for name in SI_POLYMORPHS}
    assert list(structures) == ["diamond", "beta-Sn", "fcc", "sh"]
    assert [len(s) for s in structures.values()] == [2, 2, 1, 1]
    volume = {name: s.get_volume() / len(s) for name, s in structures.items()}
    assert volume["diamond"] == pytest.approx(5.47**3 / 8)
    # The high-pressure phases are denser than diamond: diamond > beta-Sn > sh > fcc.
    assert volume["diamond"] > volume["beta-Sn"] > volume["sh"] > volume["fcc"]
    for s in structures.values():
        assert set(s.get_chemical_symbols()) == {"Si"} and s.pbc.all()
    # Nearest-neighbour distances are physical (no overlapping atoms).
    beta = structures["beta-Sn"]
    assert 2.3 < beta.get_distance(0, 1, mic=True) < 2.7
    with pytest.raises(ValueError, match="unknown silicon polymorph 'bcc'.*diamond, beta-Sn, fcc, sh"):
        silicon_polymorph("bcc")


# ----------------------------------------------------------------------------- table and plot


def test_eos_table_without_reference():
    results = {
        "PBE": [fake_result("diamond", -5.4231, 20.451, 88.9), fake_result("beta-Sn", -5.1234, 15.601, 110.2)],
        "SCAN": [fake_result("fcc", -4.9, 14.4, 120.0)],
    }
    table = eos_table(results)
    lines = table.strip().splitlines()
    assert len(lines) == 2 + 3
    assert "E - E(diamond) (meV/atom)" in lines[0]
    assert "ΔV0" not in table and "ΔB" not in table and "ΔE0" not in table
    assert "| PBE | diamond | -5.4231 | 20.451 | 88.9 | 0.0 |" in lines
    assert "| PBE | beta-Sn | -5.1234 | 15.601 | 110.2 | 299.7 |" in lines
    assert "| SCAN | fcc | -4.9000 | 14.400 | 120.0 |  |" in lines
    assert "E - E(diamond)" not in eos_table({"SCAN": results["SCAN"]})


def test_eos_table_with_reference():
    results = {"PBE": [fake_result("diamond", -5.40, 21.00, 95.0), fake_result("fcc", -4.9, 14.4, 120.0)]}
    reference = {"diamond": (-5.42, 20.45, 88.0)}
    table = eos_table(results, reference)
    header = table.splitlines()[0]
    assert header.endswith("| ΔE0 (meV/atom) | ΔV0 (%) | ΔB (%) |")
    dv = 100 * (21.00 - 20.45) / 20.45
    db = 100 * (95.0 - 88.0) / 88.0
    row = next(line for line in table.splitlines() if "| diamond |" in line)
    assert row == f"| PBE | diamond | -5.4000 | 21.000 | 95.0 | 0.0 | +20.0 | {dv:+.2f} | {db:+.2f} |"
    assert f"{dv:+.2f}" == "+2.69" and f"{db:+.2f}" == "+7.95"
    fcc = next(line for line in table.splitlines() if "| fcc |" in line)
    assert fcc.endswith("| 500.0 |  |  |  |")


def test_plot_eos_writes_png(tmp_path):
    results = [
        equation_of_state(murnaghan_crystal(), MurnaghanCalculator(), name="murnaghan"),
        equation_of_state(murnaghan_crystal(), MurnaghanCalculator(), name="sj", eos="sj"),
    ]
    path = tmp_path / "eos.png"
    plot_eos(results, path)
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 1000


# ----------------------------------------------------------------------------- relaxation


def rattled_expanded_cu() -> Atoms:
    atoms = bulk("Cu", "fcc", a=3.59 * 1.03, cubic=True)
    atoms.rattle(0.05, seed=3)
    return atoms


def test_relax_cell_reaches_emt_lattice_constant(emt_cu_lattice, tmp_path):
    trajectory = tmp_path / "relax.extxyz"
    result = relax(rattled_expanded_cu(), EMT(), fmax=0.02, trajectory=trajectory)
    assert result.converged
    assert result.max_force <= 0.02
    assert 1 < result.steps < 500
    a = result.atoms.get_volume() ** (1 / 3)
    assert a == pytest.approx(emt_cu_lattice, rel=0.005)
    assert result.max_stress_gpa is not None and result.max_stress_gpa < 1.0
    # The returned copy carries the final energy and forces without the live calculator.
    assert result.atoms.get_potential_energy() == pytest.approx(result.energy)
    assert np.abs(result.atoms.get_forces()).max() <= 0.02
    frames = read(trajectory, ":")
    assert len(frames) == result.steps + 1
    assert frames[-1].get_potential_energy() == pytest.approx(result.energy)
    assert frames[0].get_potential_energy() > result.energy
    assert frames[0].get_volume() > frames[-1].get_volume()


@pytest.mark.parametrize("optimizer", ["BFGS", "LBFGS"])
def test_relax_fixed_cell_keeps_cell(optimizer):
    atoms = rattled_expanded_cu()
    result = relax(atoms, EMT(), relax_cell=False, optimizer=optimizer)
    assert result.converged and result.max_force <= 0.05
    assert np.array_equal(result.atoms.cell.array, atoms.cell.array)
    assert not np.allclose(result.atoms.positions, atoms.positions)


def test_relax_step_limit_is_not_convergence():
    result = relax(rattled_expanded_cu(), EMT(), steps=1)
    assert result.steps == 1
    assert not result.converged
    assert result.max_force > 0.05


def test_relax_under_pressure_matches_analytic_volume():
    pressure = 10.0  # GPa; Murnaghan: P(V) = B/B' ((V0/V)^B' - 1)
    result = relax(murnaghan_crystal(), MurnaghanCalculator(), fmax=1e-3, pressure_gpa=pressure)
    assert result.converged
    expected = V0 * (1 + pressure * BP / B0) ** (-1 / BP)
    assert result.atoms.get_volume() / 2 == pytest.approx(expected, rel=1e-3)
    assert result.max_stress_gpa < 0.1


def test_relax_argument_errors():
    with pytest.raises(ValueError, match="unknown optimizer 'CG'.*FIRE, BFGS, LBFGS"):
        relax(rattled_expanded_cu(), EMT(), optimizer="CG")
    with pytest.raises(ValueError, match="pressure_gpa needs a cell relaxation"):
        relax(rattled_expanded_cu(), EMT(), relax_cell=False, pressure_gpa=1.0)
