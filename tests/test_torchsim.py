"""TorchSim: our potential passes TorchSim's own interface check, equals the ASE calculator
(the reference) system by system in a batch, and runs its batched integrator."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from ase.build import bulk

from conftest import rattled_si, small_potential
from fidelity_adapters.calculator import FidelityCalculator
from fidelity_adapters.fidelity_state import UnknownFidelityError

ts = pytest.importorskip("torch_sim", reason="TorchSim is not installed: pip install 'fidelity-adapters[torchsim]'")
from torch_sim.models.interface import validate_model_outputs  # noqa: E402

from fidelity_adapters.engines.torchsim import TorchSimModel  # noqa: E402


@pytest.fixture
def si_fe_potential():
    return small_potential(["Si", "Fe"], ["PBE", "r2SCAN"])


def test_passes_torchsim_validation(si_fe_potential):
    """TorchSim's validator: Si and Fe cells alone and batched, inputs not mutated."""
    validate_model_outputs(TorchSimModel(si_fe_potential, "r2SCAN"), torch.device("cpu"), torch.float64)


def test_batch_equals_ase_calculator_per_system(si_fe_potential):
    systems = [rattled_si(), rattled_si(repeat=2, seed=1), bulk("Fe", "bcc", a=2.87).repeat((2, 1, 1))]
    systems[2].rattle(0.05, seed=3)
    model = TorchSimModel(si_fe_potential, "PBE")
    out = model(ts.io.atoms_to_state(systems, torch.device("cpu"), torch.float64))
    forces = torch.split(out["forces"], [len(a) for a in systems])
    for k, atoms in enumerate(systems):
        atoms.calc = FidelityCalculator(si_fe_potential, "PBE")
        assert abs(float(out["energy"][k]) - atoms.get_potential_energy()) < 1e-9 * len(atoms)
        np.testing.assert_allclose(forces[k].numpy(), atoms.get_forces(), atol=1e-9)
        np.testing.assert_allclose(out["stress"][k].numpy(), atoms.get_stress(voigt=False), atol=1e-9)


def test_cpu_groups_of_atoms_change_only_the_calls(si_fe_potential):
    """max_atoms_per_call splits the batch into consecutive groups (a larger system alone):
    the network is called once per group, and energies, forces and stresses are those of the
    whole batch at once, in TorchSim's order."""
    systems = [rattled_si(), rattled_si(repeat=2, seed=1), rattled_si(seed=2), bulk("Fe", "bcc", a=2.87).repeat((2, 1, 1))]
    state = ts.io.atoms_to_state(systems, torch.device("cpu"), torch.float64)
    calls = []
    hook = si_fe_potential.register_forward_hook(lambda module, args, out: calls.append(int(args[0].num_graphs)))
    try:
        outputs = {limit: TorchSimModel(si_fe_potential, "PBE", max_atoms_per_call=limit)(state) for limit in (None, 4)}
    finally:
        hook.remove()
    assert calls == [4, 1, 1, 2]  # all at once; then [2 atoms], [16 atoms], [2 + 2 atoms]
    for key in ("energy", "forces", "stress"):
        torch.testing.assert_close(outputs[4][key], outputs[None][key], rtol=0, atol=1e-12)
    with pytest.raises(ValueError, match="max_atoms_per_call must be a positive number"):
        TorchSimModel(si_fe_potential, "PBE", max_atoms_per_call=0)


def test_fidelity_is_named_and_matters(si_fe_potential):
    state = ts.io.atoms_to_state([rattled_si()], torch.device("cpu"), torch.float64)
    energies = [float(TorchSimModel(si_fe_potential, name)(state)["energy"][0]) for name in ("PBE", "r2SCAN")]
    assert abs(energies[0] - energies[1]) > 1e-4
    with pytest.raises(UnknownFidelityError, match="unknown fidelity 'SCAN'"):
        TorchSimModel(si_fe_potential, "SCAN")


def test_batched_nve_conserves_energy(si_fe_potential):
    """Four systems integrated together by TorchSim's NVE: each conserves its total energy."""
    systems = [rattled_si(repeat=2, seed=k) for k in range(4)]
    model = TorchSimModel(si_fe_potential, "PBE", compute_stress=False)
    init, update = ts.integrators.nve(model=model, dt=torch.tensor(1e-3 * ts.units.UnitSystem.metal.time), kT=torch.tensor(300 * ts.units.UnitSystem.metal.temperature))
    state = init(ts.io.atoms_to_state(systems, torch.device("cpu"), torch.float64))

    def total(s):
        kinetic = ts.calc_kinetic_energy(masses=s.masses, momenta=s.momenta, system_idx=s.system_idx)
        return s.energy + kinetic

    start = total(state)
    for _ in range(30):
        state = update(state)
    drift = (total(state) - start).abs() / torch.bincount(state.system_idx)
    assert state.n_systems == 4 and bool((drift < 1e-6).all()), drift


def test_docs_recipe_runs(si_fe_potential):
    """docs/engines/torchsim.md: ts.integrate (NVT Langevin) and ts.optimize (FIRE) on a batch."""
    systems = [rattled_si(seed=k) for k in range(2)]
    model = TorchSimModel(si_fe_potential, "r2SCAN")
    final = ts.integrate(system=systems, model=model, integrator=ts.integrators.nvt_langevin, n_steps=5, temperature=300, timestep=0.0005)
    assert final.n_systems == 2 and bool(torch.isfinite(final.positions).all())
    start = model(ts.io.atoms_to_state(systems, torch.device("cpu"), torch.float64))["energy"]
    relaxed = ts.optimize(system=systems, model=model, optimizer=ts.optimizers.fire, max_steps=20)
    assert bool((model(relaxed)["energy"] < start).all())
