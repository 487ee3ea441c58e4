"""Every ```python block of the docs runs as written (tests/test_readme.py does the README's),
so an API change that breaks an example a user copies fails here, not in their session.

A block runs in a fresh namespace in tmp_path. What a doc leaves to the reader (a model file it
made on the command line, a mace or nequip model of one's own) is set up here, small, under
the name the doc uses. Three blocks are shortened by a text replacement stated in the test
(100 epochs, 1000 MD steps); everything else runs as written. A block skips only when what it needs
is not installed (mace-torch) or not on this machine (matgl's MatPES weights)."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from ase.build import molecule

from conftest import small_potential
from fidelity_adapters import FidelityCalculator, UnknownFidelityError
from fidelity_adapters.pretrained import entry

DOCS = Path(__file__).resolve().parents[1] / "docs"


def python_blocks(name: str) -> list[str]:
    return re.findall(r"```python\n(.*?)```", (DOCS / name).read_text(), flags=re.S)


def run_block(name: str, index: int, namespace: dict | None = None, replace: dict[str, str] | None = None) -> dict:
    """Execute python block `index` of docs/`name` (after the stated replacements) and return its
    namespace."""
    block = python_blocks(name)[index]
    for old, new in (replace or {}).items():
        assert old in block, f"docs/{name} block {index + 1} no longer contains {old!r}: update the test's replacement"
        block = block.replace(old, new)
    namespace = {"__name__": "docs", **(namespace or {})}
    exec(compile(block, f"{DOCS / name} (python block {index + 1})", "exec"), namespace)
    return namespace


def require_matgl(name: str) -> None:
    if entry(name).locate()[0] is None:
        pytest.skip(f"{name}: {entry(name).locate()[1]}")


@pytest.fixture
def in_tmp(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_recipe(in_tmp, capsys):
    from fidelity_adapters.bundled import WATER_CLUSTERS

    if not WATER_CLUSTERS.exists():
        pytest.skip("bundled data not generated yet (examples/make_bundled_data.py)")
    assert len(python_blocks("recipe.md")) == 1
    ns = run_block("recipe.md", 0, replace={"max_epochs=100": "max_epochs=1"})  # 1 epoch: the test stays fast
    assert (in_tmp / "split.json").is_file() and (in_tmp / "runs" / "mfi" / "best_model.safetensors").is_file()
    printed = ast.literal_eval(capsys.readouterr().out.strip().splitlines()[-1])  # the errors dict
    assert {"energy_mae_per_atom", "force_mae", "energy_bias_per_atom", "n_structures"} <= set(printed)
    assert printed["n_structures"] == len(ns["split"].test)
    assert np.isfinite(ns["atoms"].get_potential_energy())
    for wrong in ("r2scan", "SCAN"):  # the block's comment: these would raise
        with pytest.raises(UnknownFidelityError):
            FidelityCalculator(ns["potential"], wrong)


def test_pretrained(in_tmp, capsys):
    for name in ("matgl:M3GNet-MatPES-r2SCAN-v2025.1", "matgl:M3GNet-MatPES-PBE-v2025.1"):
        require_matgl(name)
    pytest.importorskip("sevenn")
    assert len(python_blocks("pretrained.md")) == 1
    ns = run_block("pretrained.md", 0)
    assert "sevenn:7net-mf-0" in capsys.readouterr().out
    assert ns["r2scan"].fidelities == ["r2SCAN"]
    assert ns["pbe_scan"].fidelities == ["PBE", "SCAN"] and ns["mf"].fidelities == ["r2SCAN", "PBE", "SCAN"]
    atoms = molecule("H2O")
    for potential, base in ((ns["pbe_scan"], "PBE"), (ns["mf"], "r2SCAN")):  # SCAN starts as the base
        energies = [FidelityCalculator(potential, f).get_potential_energy(atoms) for f in (base, "SCAN")]
        assert energies[0] == pytest.approx(energies[1], rel=1e-6)


def mace_model():
    pytest.importorskip("mace", reason="mace-torch is not installed (its own environment: docs/third_party.md)")
    from test_third_party import tiny_mace

    return tiny_mace()


def nequip_model():
    pytest.importorskip("nequip")
    from test_third_party import tiny_nequip

    return tiny_nequip()


@pytest.mark.parametrize("index", range(4), ids=["mace", "nequip", "nequip_global_state", "sevenn"])
def test_third_party(index, in_tmp):
    blocks = python_blocks("third_party.md")
    assert len(blocks) == 4
    if index == 0:  # wrap_third_party(mace_model, ...)
        ns = run_block("third_party.md", 0, {"mace_model": mace_model()})
        assert ns["potential"].fidelities == ["PBE", "SCAN"]
    elif index == 1:  # the explicit wrap on a copy, then wrap_third_party on the model itself
        ns = run_block("third_party.md", 1, {"nequip_model": nequip_model()})
        for potential in (ns["explicit"], ns["potential"]):  # both usable: one wrap per model object
            assert potential.fidelities == ["PBE", "SCAN"]
            assert np.isfinite(FidelityCalculator(potential, "SCAN").get_potential_energy(molecule("H2O")))
        assert tuple(ns["potential"].injector.places) == ("messages", "readout")
        assert tuple(ns["explicit"].injector.places) == ("messages",)
        assert not ns["explicit"].fidelity_state.elemental_energies.any()  # plain wrap: references at zero
        assert ns["potential"].fidelity_state.elemental_energies.abs().min() > 1  # nequip's per-type shifts
    elif index == 2:  # nequip_global_state restores the default dtype
        pytest.importorskip("nequip")
        default = torch.get_default_dtype()
        ns = run_block("third_party.md", 2)
        assert torch.get_default_dtype() == default
        assert next(ns["model"].parameters()).dtype == torch.float64
    else:
        pytest.importorskip("sevenn")
        ns = run_block("third_party.md", 3)
        assert ns["potential"].fidelities == ["r2SCAN", "PBE"] and ns["backbone"].cutoff == 5.0
        assert not ns["potential"].fidelity_state.elemental_energies.any()  # "references start at zero"


def test_export(in_tmp, capsys):
    from fidelity_adapters.export import export_potential

    assert len(python_blocks("engines/export.md")) == 2
    potential = small_potential(["H", "O"], ["PBE", "SCAN"])
    export_potential(potential, "SCAN", in_tmp / "model_scan.pt2")  # what the doc's CLI line writes
    ns = run_block("engines/export.md", 0)
    assert capsys.readouterr().out.strip()
    reference = molecule("H2O")
    reference.calc = FidelityCalculator(potential, "SCAN")
    assert ns["atoms"].get_potential_energy() == pytest.approx(reference.get_potential_energy(), abs=1e-6)

    ns = run_block("engines/export.md", 1)  # torch only: its own neighbour list must give the same numbers
    reference.positions = ns["positions"].numpy()
    assert ns["meta"]["fidelity"] == "SCAN" and ns["edge_index"].shape == (2, 6)
    assert float(ns["energy"]) == pytest.approx(reference.get_potential_energy(), abs=1e-6)
    np.testing.assert_allclose(ns["forces"].numpy(), reference.get_forces(), atol=1e-6)


def test_lammps(in_tmp, capsys):
    from fidelity_adapters.serialization import save_potential

    lammps_engine = pytest.importorskip("fidelity_adapters.engines.lammps")
    try:
        lammps_engine.import_lammps()
    except ImportError as error:
        pytest.skip(f"LAMMPS is not installed ({error})")
    assert len(python_blocks("engines/lammps.md")) == 1
    # the doc's r2scan.safetensors (made by its `fidelity-adapters pretrained` line): a small model here
    save_potential(small_potential(["H", "O"], ["r2SCAN"]), in_tmp / "r2scan.safetensors")
    ns = run_block("engines/lammps.md", 0, replace={"run 1000": "run 10"})  # 10 MD steps: the test stays fast
    energy, total = map(float, capsys.readouterr().out.split())
    assert np.isfinite(energy) and total > energy  # the atoms move: kinetic energy
    assert ns["driver"].calls == 1 + 10  # the run's setup and 10 steps, through our potential
    assert (in_tmp / "water.data").is_file()


def test_torchsim(in_tmp, capsys):
    pytest.importorskip("torch_sim")
    require_matgl("matgl:M3GNet-MatPES-r2SCAN-v2025.1")
    assert len(python_blocks("engines/torchsim.md")) == 1
    ns = run_block("engines/torchsim.md", 0, replace={"n_steps=1000": "n_steps=10"})  # 10 steps: the test stays fast
    final, relaxed, model = ns["final"], ns["relaxed"], ns["model"]
    assert final.n_systems == relaxed.n_systems == 2 and bool(torch.isfinite(final.positions).all())
    assert bool((model(relaxed)["energy"] <= model(final)["energy"] + 1e-6).all())
    assert capsys.readouterr().out.strip()
