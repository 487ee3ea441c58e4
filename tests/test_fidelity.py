"""FidelityState and wrap(): names, errors, references, the fidelity reaching the output; inference batches."""

import warnings

import numpy as np
import pytest
import torch

from backbones import M3GNet
from conftest import rattled_si, small_potential, water_dimer
from fidelity_adapters import FidelityCalculator, UnknownFidelityError, from_atoms, wrap
from fidelity_adapters.references import fit_elemental_energies, force_scale


def test_fidelity_changes_energy_through_state_even_with_equal_references(si_potential):
    si_potential.fidelity_state.set_references(np.zeros((2, 1)), 1.0)
    atoms = rattled_si()
    e = [float(si_potential(si_potential.graph(atoms, f), forces=False)["energy"][0]) for f in ("PBE", "SCAN")]
    assert e[0] != pytest.approx(e[1], abs=1e-8)


def test_unknown_fidelity_name_lists_the_known_ones(si_potential):
    with pytest.raises(UnknownFidelityError, match=r"'r2SCAN'.*\['PBE', 'SCAN'\]"):
        si_potential.graph(rattled_si(), "r2SCAN")
    with pytest.raises(UnknownFidelityError, match="r2SCAN"):
        FidelityCalculator(si_potential, "r2SCAN")
    with pytest.raises(UnknownFidelityError):
        si_potential.predict([from_atoms(rattled_si())], "pbe")  # names are case-sensitive


def test_changing_the_calculators_fidelity_discards_the_old_results(si_potential):
    atoms = rattled_si()
    atoms.calc = FidelityCalculator(si_potential, "PBE")
    pbe = atoms.get_potential_energy()
    atoms.calc.fidelity = "SCAN"
    scan = atoms.get_potential_energy()
    assert scan != pytest.approx(pbe, abs=1e-8)
    atoms.calc.set(fidelity="PBE")
    assert atoms.get_potential_energy() == pytest.approx(pbe, abs=1e-12)
    with pytest.raises(UnknownFidelityError):
        atoms.calc.fidelity = "r2SCAN"
    assert atoms.calc.fidelity == "PBE"


def test_wrap_refuses_fidelities_a_backbone_cannot_take():
    with pytest.raises(ValueError, match="no global state"):
        wrap(M3GNet(n_elements=1, state_dim=0), ["PBE", "SCAN"], ["Si"])
    with pytest.raises(ValueError, match="unique"):
        wrap(M3GNet(n_elements=1), ["PBE", "PBE"], ["Si"])
    with pytest.raises(ValueError, match="2 elements"):
        wrap(M3GNet(n_elements=2), ["PBE", "SCAN"], ["Si"])


def test_single_fidelity_model_has_no_state_and_the_paper_parameter_count():
    from fidelity_adapters import m3gnet_potential

    one = m3gnet_potential(["Si"], ["SCAN"])
    two = m3gnet_potential(["Si"], ["PBE", "SCAN"])
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert one.fidelity_state.embedding is None
    assert count(one) == 221_597  # Ko & Ong, 1fi silicon
    assert count(two) == 252_589  # docs/design.md: the state path adds 30,992 parameters


def _synthetic(seed=0):
    """Energies that are exactly linear in composition, with different references per fidelity."""
    rng = np.random.default_rng(seed)
    truth = {"PBE": {1: -3.1, 8: -430.0}, "SCAN": {1: -3.4, 8: -431.5}}
    structures = []
    for k in range(30):
        n_h, n_o = int(rng.integers(1, 6)), int(rng.integers(1, 4))
        from ase import Atoms

        atoms = Atoms(f"H{n_h}O{n_o}", positions=rng.uniform(0, 6, size=(n_h + n_o, 3)))
        fidelity = "PBE" if k % 3 else "SCAN"
        atoms.info.update(fidelity=fidelity, energy=n_h * truth[fidelity][1] + n_o * truth[fidelity][8] + rng.normal(scale=1e-3))
        atoms.arrays["forces"] = rng.normal(scale=0.5, size=(len(atoms), 3))
        structures.append(from_atoms(atoms, label=f"synthetic {k}"))
    return structures, truth


def test_per_fidelity_references_are_recovered():
    structures, truth = _synthetic()
    table = fit_elemental_energies(structures, [1, 8], ["PBE", "SCAN"])
    for f, name in enumerate(["PBE", "SCAN"]):
        assert table[f] == pytest.approx([truth[name][1], truth[name][8]], abs=2e-3)


def test_references_enter_the_potential_end_to_end():
    structures, truth = _synthetic()
    potential = small_potential(["H", "O"], ["PBE", "SCAN"])
    potential.fit_references(structures)
    with torch.no_grad():
        for p in potential.backbone.readouts.parameters():
            p.zero_()  # network contributes nothing: the energy is the reference alone
    atoms = water_dimer()
    for name in ("PBE", "SCAN"):
        e = float(potential(potential.graph(atoms, name), forces=False)["energy"][0])
        assert e == pytest.approx(2 * truth[name][8] + 4 * truth[name][1], abs=1e-2)


def test_references_survive_float32_and_force_scale():
    structures, _ = _synthetic()
    potential = small_potential(["H", "O"], ["PBE", "SCAN"], dtype=torch.float32)
    potential.fit_references(structures)
    assert potential.fidelity_state.elemental_energies.dtype == torch.float64
    expected = np.sqrt(np.mean(np.concatenate([s.forces.ravel() for s in structures]) ** 2))
    assert float(potential.fidelity_state.scale) == pytest.approx(expected)
    assert force_scale([]) == 1.0


def test_forces_only_fidelity_gets_zero_references():
    structures, _ = _synthetic()
    for s in structures:
        if s.fidelity == "SCAN":
            s.energy = float("nan")
    table = fit_elemental_energies(structures, [1, 8], ["PBE", "SCAN"])
    assert np.all(table[1] == 0) and np.all(table[0] != 0)


def test_m3gnet_potential_init_depends_on_its_seed_only():
    from fidelity_adapters import m3gnet_potential

    first = m3gnet_potential(["Si"], ["PBE", "SCAN"], seed=3)
    state = torch.get_rng_state()
    torch.randn(100)  # whatever ran before must not change the start
    second = m3gnet_potential(["Si"], ["PBE", "SCAN"], seed=3)
    other = m3gnet_potential(["Si"], ["PBE", "SCAN"], seed=4)
    for a, b, c in zip(first.parameters(), second.parameters(), other.parameters()):
        assert torch.equal(a, b)
    assert any(not torch.equal(a, c) for a, c in zip(first.parameters(), other.parameters()))
    before = torch.get_rng_state()
    m3gnet_potential(["Si"], ["PBE"], seed=5)
    assert torch.equal(torch.get_rng_state(), before) and not torch.equal(state, before)


def test_composition_outside_the_fitted_span_is_flagged(tmp_path):
    """References fitted on water clusters only (every structure H2nOn) cannot tell H from O:
    an H2 molecule then gets a warning (or, by choice, an error), water none; the span is
    saved with the model; full-rank data (mixed compositions) flags nothing."""
    from ase import Atoms

    from fidelity_adapters.serialization import load_potential, save_potential

    def labelled(atoms, energy):
        s = from_atoms(atoms, "PBE")
        s.energy = energy
        return s

    water_only = [labelled(water_dimer(seed=k), -400.0 - k) for k in range(4)]
    potential = small_potential(["H", "O"], ["PBE", "SCAN"])
    potential.fit_references(water_only)
    h2 = Atoms("H2", positions=[[0, 0, 0], [0, 0, 0.74]])
    with pytest.warns(UserWarning, match="composition H2 is outside the compositions the PBE reference energies"):
        potential.graph(h2, "PBE")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        potential.graph(water_dimer(seed=9), "PBE")  # in the span: silent
        potential.graph(h2, "SCAN")  # SCAN had no energies: relative energies, nothing to flag
    potential.unfitted_composition = "error"
    with pytest.raises(ValueError, match="composition H2 is outside"):
        potential.graph(h2, "PBE")
    save_potential(potential, tmp_path / "m.safetensors")
    reloaded = load_potential(tmp_path / "m.safetensors")
    with pytest.warns(UserWarning, match="composition H2 is outside"):
        reloaded.graph(h2, "PBE")
    mixed = water_only + [labelled(h2, -30.0)]
    potential.fit_references(mixed)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        potential.graph(Atoms("O2", positions=[[0, 0, 0], [0, 0, 1.2]]), "PBE")


def test_inference_batches_hold_at_most_max_atoms_and_give_the_same_predictions(si_potential):
    structures = [from_atoms(a, "PBE") for a in (rattled_si(seed=0), rattled_si(seed=1), rattled_si(2), rattled_si(seed=2))]
    sizes = lambda **limits: [[len(s) for s in chosen] for _, chosen in si_potential.batches(structures, "PBE", **limits)]  # noqa: E731
    assert sizes() == [[2, 2, 16, 2]]
    assert sizes(max_atoms=5) == [[2, 2], [16], [2]]  # a structure over the budget goes alone
    assert sizes(batch_size=3, max_atoms=100) == [[2, 2, 16], [2]]
    calls = []
    si_potential.backbone.register_forward_hook(lambda *_: calls.append(1))
    together, apart = si_potential.predict(structures, "PBE"), si_potential.predict(structures, "PBE", max_atoms=1)
    assert len(calls) == 1 + 4
    for a, b in zip(together, apart):
        assert a["energy"] == pytest.approx(b["energy"], rel=1e-12)
        np.testing.assert_allclose(a["forces"], b["forces"], atol=1e-12)
    with pytest.raises(ValueError, match="max_atoms must be >= 1"):
        si_potential.predict(structures, "PBE", max_atoms=0)
