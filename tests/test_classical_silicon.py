"""A silicon ladder with exact answers (Stillinger-Weber low, Tersoff-type high): a tiny mfi
model's equation of state is checked against the exact high level, and the physics commands
(eos, relax, md, rdf) run on it and respect the fidelity name."""

import json

import numpy as np
import pytest
import torch
from ase.io import read, write

from conftest import SMALL
from fidelity_adapters import FidelityCalculator, TrainConfig, cli, m3gnet_potential, save_potential, train

pytest.importorskip("matscipy", reason="the classical silicon ladder needs matscipy (pip install -e '.[classical]')")
from fidelity_adapters.classical_silicon import calculator, label, sample_silicon, silicon_ladder  # noqa: E402
from fidelity_adapters.physics.eos import equation_of_state, silicon_polymorph  # noqa: E402

EOS_RANGE = (0.92, 1.08)  # inside the volumes the model was trained on


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """mfi model: 40 SW + 8 Tersoff diamond cells (volumes 0.88-1.12 of the start)."""
    frames = sample_silicon(48, seed=1, polymorphs=("diamond",), volume_range=(0.88, 1.12))
    sw, tersoff = label(frames, "SW"), label(frames, "Tersoff")
    torch.manual_seed(0)
    potential = m3gnet_potential(["Si"], ["SW", "Tersoff"], **SMALL, cutoff=4.0, three_body_cutoff=3.5)
    config = TrainConfig(max_epochs=30, batch_size=8, learning_rate=3e-3, progress=False, monitor="Tersoff")
    train(potential, sw[:40] + tersoff[:8], tersoff[40:], config)
    path = tmp_path_factory.mktemp("si") / "model.safetensors"
    save_potential(potential, path)
    return potential, path


def test_the_ladder_differs_where_it_should():
    """The premise: SW and Tersoff agree on diamond far better than on the dense phases."""
    structures = silicon_ladder(8, seed=0)
    by_level = {(s.fidelity, s.info["struct_id"]): s.energy / len(s) for s in structures}
    assert len(structures) == 16 and {s.fidelity for s in structures} == {"SW", "Tersoff"}
    diamond = [equation_of_state(silicon_polymorph("diamond"), calculator(level)) for level in ("SW", "Tersoff")]
    assert abs(diamond[0].v0 - diamond[1].v0) / diamond[1].v0 < 0.02
    gap = {}
    for level in ("SW", "Tersoff"):
        energies = {}
        for phase in ("diamond", "fcc"):
            atoms = silicon_polymorph(phase)
            atoms.calc = calculator(level)
            energies[phase] = atoms.get_potential_energy() / len(atoms)
        gap[level] = energies["fcc"] - energies["diamond"]
    assert abs(gap["SW"] - gap["Tersoff"]) > 0.3  # eV/atom
    assert all(np.isfinite(v) for v in by_level.values())
    with pytest.raises(ValueError, match="known"):
        calculator("MEAM")


def test_mfi_equation_of_state_matches_the_exact_high_level(trained):
    potential, _ = trained
    model = equation_of_state(silicon_polymorph("diamond"), FidelityCalculator(potential, "Tersoff"), volume_range=EOS_RANGE)
    exact = equation_of_state(silicon_polymorph("diamond"), calculator("Tersoff"), volume_range=EOS_RANGE)
    assert model.v0 == pytest.approx(exact.v0, rel=0.03)
    assert model.b_gpa == pytest.approx(exact.b_gpa, rel=0.5)  # a 30-epoch 16-wide model: right curvature, loosely
    assert model.e0 == pytest.approx(exact.e0, abs=0.1)


def test_eos_command_reports_each_fidelity(trained, tmp_path, capsys):
    _, path = trained
    reference = tmp_path / "reference.json"
    exact = equation_of_state(silicon_polymorph("diamond"), calculator("Tersoff"), volume_range=EOS_RANGE)
    reference.write_text(json.dumps({"diamond": [exact.e0, exact.v0, exact.b_gpa]}))
    code = cli.main(["eos", str(path), "--fidelity", "SW", "Tersoff", "--polymorphs", "diamond", "--range", "0.92", "1.08",
                     "--reference", str(reference), "--out", str(tmp_path / "eos")])  # fmt: skip
    assert code == 0
    rows = json.loads((tmp_path / "eos" / "eos.json").read_text())
    assert [r["fidelity"] for r in rows] == ["SW", "Tersoff"] and rows[0]["e0"] != rows[1]["e0"]
    assert "Tersoff" in (tmp_path / "eos" / "eos.md").read_text()
    assert (tmp_path / "eos" / "eos_Tersoff.png").exists()
    assert cli.main(["eos", str(path), "--fidelity", "PBE", "--out", str(tmp_path / "x")]) == 2
    assert "unknown fidelity 'PBE'" in capsys.readouterr().err


def test_relax_and_md_commands_respect_the_fidelity(trained, tmp_path, capsys):
    _, path = trained
    start = silicon_polymorph("diamond").repeat(2)
    start.rattle(0.05, seed=0)
    write(tmp_path / "start.extxyz", start)
    finals, relaxed_positions = {}, {}
    for level in ("SW", "Tersoff"):
        out = tmp_path / f"md_{level}.extxyz"
        assert cli.main(["md", str(path), str(tmp_path / "start.extxyz"), "--fidelity", level, "--ensemble", "nvt",
                         "--steps", "20", "--interval", "10", "--out", str(out)]) == 0  # fmt: skip
        finals[level] = read(out, ":")[-1].positions
        relaxed = tmp_path / f"relaxed_{level}.extxyz"
        code = cli.main(["relax", str(path), str(tmp_path / "start.extxyz"), "--fidelity", level, "--fmax", "0.05",
                         "--out", str(relaxed)])  # fmt: skip
        assert code == 0 and read(relaxed).get_forces().max() < 0.05 + 1e-9
        relaxed_positions[level] = read(relaxed).positions
    assert not np.allclose(finals["SW"], finals["Tersoff"])
    assert not np.allclose(relaxed_positions["SW"], relaxed_positions["Tersoff"])
    assert cli.main(["rdf", str(tmp_path / "md_SW.extxyz"), "--angles", "Si", "Si", "--angle-cutoff", "2.85",
                     "--coordination-cutoff", "2.85", "--out", str(tmp_path / "rdf")]) == 0  # fmt: skip
    out = capsys.readouterr().out
    assert "coordination numbers: 4: 1.000" in out
    assert (tmp_path / "rdf" / "rdf.png").exists() and (tmp_path / "rdf" / "angles.txt").exists()


@pytest.mark.slow
def test_nve_of_a_trained_model_conserves_energy_over_a_picosecond(trained):
    from ase.build import bulk

    from fidelity_adapters.physics.md import run_md

    potential, _ = trained
    atoms = bulk("Si", "diamond", a=5.43, cubic=True).repeat(2)  # 64 atoms
    result = run_md(atoms, FidelityCalculator(potential, "Tersoff"), ensemble="nve", temperature_K=300, timestep_fs=1.0,
                    steps=1000, interval=50, progress=False)  # fmt: skip
    assert len(atoms) == 64 and result.times_ps[-1] == pytest.approx(1.0)
    assert result.max_deviation_mev_per_atom < 1.0
    assert result.temperature_K[1:].mean() > 50  # it really moved
