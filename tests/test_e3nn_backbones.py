"""The e3nn backbones (MACEStyle, NequIPStyle) with the fidelity injected at each place:
E(3) equivariance of energies, forces, stress and intermediate features, forces and stress as
derivatives, periodic images, the fidelity reaching the energy, errors for set-ups where it
could not, save/load, and a few epochs of training on bundled water clusters."""

import copy
import functools

import numpy as np
import pytest
import torch
from e3nn import o3
from scipy.spatial.transform import Rotation
from torch import nn
from torch_geometric.data import Batch

from backbones import M3GNet, MACEStyle, NequIPStyle
from conftest import SMALL, water_dimer
from fidelity_adapters import (
    TrainConfig, load_potential, mace_style_potential, nequip_style_potential, save_potential, train, wrap,
)  # fmt: skip
from fidelity_adapters.bundled import water_clusters
from backbones.injection_sites import InjectionSite
from fidelity_adapters.injection import ScalarFiLM, check_fidelity_reaches_output
from fidelity_adapters.serialization import read_metadata

TINY = {"channels": 8, "n_basis": 6, "radial_hidden": 8, "readout_hidden": 8}
BACKBONES = {
    "MACEStyle": lambda: MACEStyle(n_elements=2, lmax=2, hidden_lmax=1, correlation=3, **TINY),
    "NequIPStyle": lambda: NequIPStyle(n_elements=2, lmax=2, **TINY),
}
PLACES = ("embedding", "messages", "readout")
CASES = [(name, place) for name in BACKBONES for place in PLACES]


@functools.cache
def potential_of(name, place):
    """A small float64 model (cached: the tests that use it do not change it)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return wrap(BACKBONES[name]().double(), ["PBE", "SCAN"], ["H", "O"], inject=(place,), inject_dim=8)


def periodic_water():
    atoms = water_dimer()
    atoms.cell = [[7.0, 0.0, 0.0], [1.0, 6.5, 0.0], [0.5, 0.8, 6.8]]  # triclinic, smaller than 2 x cutoff
    atoms.pbc = True
    return atoms


def transformed(atoms, matrix):
    out = atoms.copy()
    out.positions = atoms.positions @ matrix.T
    out.cell = atoms.cell.array @ matrix.T
    return out


def energy_of(potential, atoms, fidelity) -> float:
    return float(potential(potential.graph(atoms, fidelity), forces=False)["energy"].detach())


def all_sites(potential):
    return [site for found in potential.backbone.injection_sites().values() for site in found]


def outputs_and_features(potential, atoms, fidelity="PBE"):
    """Energy, forces, stress, and the features at every injection site (after injection)."""
    features = []

    def record(irreps):
        def hook(module, args, output=None):
            features.append((irreps, (args[0] if output is None else output).detach()))

        return hook

    handles = [
        site.module.register_forward_pre_hook(record(site.irreps)) if site.on_input
        else site.module.register_forward_hook(record(site.irreps))
        for site in all_sites(potential)
    ]  # fmt: skip
    try:
        out = potential(potential.graph(atoms, fidelity), forces=True, stress=True)
    finally:
        for handle in handles:
            handle.remove()
    return {k: v.detach() for k, v in out.items()}, features


@pytest.mark.parametrize("name,place", CASES)
def test_rotations_and_inversion(name, place):
    """Rotating (and reflecting) the input: energy unchanged, forces and stress rotated, and
    every intermediate feature transformed by its irreps' D(R)."""
    potential = potential_of(name, place)
    atoms = periodic_water()
    base, features = outputs_and_features(potential, atoms)
    rotation = Rotation.random(random_state=7).as_matrix()
    for matrix in (rotation, -rotation):  # proper, then improper (parity is respected)
        moved, moved_features = outputs_and_features(potential, transformed(atoms, matrix))
        r = torch.tensor(matrix)
        torch.testing.assert_close(moved["energy"], base["energy"], rtol=0, atol=1e-9)
        torch.testing.assert_close(moved["forces"], base["forces"] @ r.T, rtol=0, atol=1e-9)
        torch.testing.assert_close(moved["stress"][0], r @ base["stress"][0] @ r.T, rtol=0, atol=1e-9)
        assert len(moved_features) == len(features) == len(all_sites(potential))
        for (irreps, x), (_, y) in zip(features, moved_features):
            d = o3.Irreps(irreps).D_from_matrix(r)  # e3nn builds D from float32 generators: ~1e-7 accurate
            torch.testing.assert_close(y, x @ d.T, rtol=0, atol=1e-6)
    assert base["forces"].abs().max() > 1e-4  # not trivially equivariant


@pytest.mark.parametrize("name,place", CASES)
def test_fidelity_changes_energy_and_gets_gradients(name, place):
    potential = potential_of(name, place)
    dimer = water_dimer()
    pbe, scan = (potential.predict([dimer], f)[0]["energy"] for f in ("PBE", "SCAN"))
    assert abs(pbe - scan) > 1e-6  # references are zero: the difference is the network's
    batch = Batch.from_data_list([potential.graph(dimer, f) for f in ("PBE", "SCAN")])
    weight = potential.fidelity_state.embedding.weight
    films = list(potential.injector.parameters())
    grads = torch.autograd.grad(potential(batch, forces=False)["energy"].sum(), [weight, *films])
    assert bool(grads[0].abs().sum(1).gt(0).all()) and all(g.abs().sum() > 0 for g in grads[1:])
    features = potential.structure_features([dimer], "PBE"), potential.structure_features([dimer], "SCAN")
    assert features[0].shape == (1, 2 * 8 * (2 if name == "MACEStyle" else 1))
    if place != "readout":  # readout injection acts after the features DIRECT sampling uses
        assert not np.allclose(*features)


def test_scalar_film_touches_only_0e_channels():
    irreps = "2x0e+1x0o+1x1o+1x0e"
    film = ScalarFiLM(irreps, 4)
    generator = torch.Generator().manual_seed(0)
    x, s = torch.randn(5, 2 + 1 + 3 + 1, generator=generator), torch.randn(5, 4, generator=generator)
    y = film(x, s)
    scalar = torch.tensor([0, 1, 6])
    others = torch.tensor([2, 3, 4, 5])
    assert torch.equal(y[:, others], x[:, others])
    assert (y[:, scalar] - x[:, scalar]).abs().min() > 0  # gamma, beta non-zero at initialisation
    with pytest.raises(ValueError, match="no 0e"):
        ScalarFiLM("3x1o+1x0o", 4)


class Toy(nn.Module):
    """A state-less backbone without equivariant parts: per-atom scalars from species and
    neighbour distances, passed through a block that returns a tuple, and a dead branch."""

    cutoff, state_dim, n_heads = 3.0, 0, 1
    config = {"n_elements": 2}

    def __init__(self):
        super().__init__()
        self.embedding = nn.Embedding(2, 4)
        self.block = TupleBlock()
        self.unused = nn.Linear(4, 4)
        self.readout = nn.Linear(4, 1)

    def forward(self, graph, edge_vectors, state):
        h, _ = self.block(self.embedding(graph.species), edge_vectors.norm(dim=1), graph.edge_index)
        self.unused(h)  # computed, never used: injecting here cannot reach the energy
        return self.readout(h).squeeze(-1)


class TupleBlock(nn.Module):
    def forward(self, h, lengths, edge_index):
        messages = torch.zeros_like(h).index_add(0, edge_index[0], h[edge_index[1]] * torch.exp(-lengths)[:, None])
        return torch.tanh(h + messages), messages


class ToyWithSites(Toy):
    def injection_sites(self):
        return {
            "messages": [InjectionSite(self.block, "4x0e", index=0)],
            "readout": [InjectionSite(self.readout, "4x0e", on_input=True)],
            "embedding": [InjectionSite(self.unused, "4x0e")],
        }


def test_wrap_errors_instead_of_ignoring_the_fidelity():
    with pytest.raises(ValueError, match="no global state"):
        wrap(Toy(), ["PBE", "SCAN"], ["H", "O"])
    assert wrap(Toy(), ["PBE"], ["H", "O"]).injector is None  # one fidelity needs no way in
    with pytest.raises(ValueError, match=r"known places: \['embedding', 'messages', 'readout'\]"):
        wrap(NequIPStyle(n_elements=2, **TINY), ["PBE", "SCAN"], ["H", "O"], inject=("edges",))
    with pytest.raises(RuntimeError, match=r"ToyWithSites with the fidelity injected at \['embedding'\]"):
        wrap(ToyWithSites(), ["PBE", "SCAN"], ["H", "O"], inject=("embedding",))
    potential = wrap(ToyWithSites(), ["PBE", "SCAN"], ["H", "O"], inject=("messages", "readout"))  # tuple and input sites
    batch = Batch.from_data_list([potential.graph(water_dimer(), "PBE")])
    vectors = (batch.pos[batch.edge_index[1]] - batch.pos[batch.edge_index[0]]).float()  # no periodic images
    with pytest.raises(RuntimeError, match="no fidelity set"):
        potential.backbone(batch, vectors, None)
    # an injection option that could not take effect is refused, not ignored
    with pytest.raises(ValueError, match="M3GNet takes the fidelity through its global state"):
        wrap(M3GNet(n_elements=2, state_dim=4, **SMALL), ["PBE", "SCAN"], ["H", "O"], inject=("messages",))
    with pytest.raises(ValueError, match="nowhere"):
        mace_style_potential(["H", "O"], ["SCAN"], inject_dim=8, **TINY)


def test_check_uses_no_random_numbers_and_leaves_no_grads():
    potential = potential_of("MACEStyle", "messages")
    before = torch.get_rng_state()
    check_fidelity_reaches_output(potential)
    assert torch.equal(torch.get_rng_state(), before)
    assert all(p.grad is None for p in potential.parameters())


def test_recipes_are_seeded_without_touching_the_global_generator():
    before = torch.get_rng_state()
    first = nequip_style_potential(["H", "O"], ["PBE", "SCAN"], seed=3, inject=("embedding",), **TINY)
    second = nequip_style_potential(["H", "O"], ["PBE", "SCAN"], seed=3, inject=("embedding",), **TINY)
    assert torch.equal(torch.get_rng_state(), before)
    assert all(torch.equal(a, b) for a, b in zip(first.parameters(), second.parameters()))
    assert first.injector.places == ["embedding"]
    assert mace_style_potential(["H", "O"], ["SCAN"], **TINY).injector is None


@pytest.mark.parametrize("name", BACKBONES)
def test_save_load_keeps_the_fidelity_input(name, tmp_path):
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(1)
        potential = wrap(BACKBONES[name]().double(), ["PBE", "SCAN"], ["H", "O"], inject=("embedding", "readout"), inject_dim=6)
    references = np.array([[-13.6, -2040.0], [-13.6, -2040.0]])  # equal: fidelities differ by the network only
    potential.fidelity_state.set_references(references, 0.8)
    save_potential(potential, tmp_path / "m.safetensors")
    loaded = load_potential(tmp_path / "m.safetensors")
    assert read_metadata(tmp_path / "m.safetensors")["injection"] == {"places": ["embedding", "readout"], "dim": 6}
    assert loaded.injector.places == ["embedding", "readout"] and loaded.fidelity_state.dim == 6
    atoms = periodic_water()
    for fidelity in ("PBE", "SCAN"):
        a, b = (p(p.graph(atoms, fidelity), stress=True) for p in (potential, loaded))
        for key in ("energy", "forces", "stress"):
            torch.testing.assert_close(a[key], b[key], rtol=0, atol=0)
    pbe = energy_of(loaded, atoms, "PBE")
    assert abs(pbe - energy_of(loaded, atoms, "SCAN")) > 1e-6
    copied = copy.deepcopy(loaded)  # the copy's hooks use the copy's injector
    torch.nn.init.zeros_(copied.injector.films["embedding"][0].mlp[2].bias)
    assert energy_of(loaded, atoms, "PBE") == pbe and energy_of(copied, atoms, "PBE") != pbe


@pytest.mark.parametrize("name", BACKBONES)
def test_training_loss_falls(name):
    data = water_clusters()
    pbe = [s for s in data if s.fidelity == "PBE"][:8]
    scan = [s for s in data if s.fidelity == "SCAN"][8:14]
    train_set, val_set = pbe[:6] + scan[:4], pbe[6:] + scan[4:]
    recipe = mace_style_potential if name == "MACEStyle" else nequip_style_potential
    potential = recipe(["H", "O"], ["PBE", "SCAN"], seed=0, channels=8)
    result = train(potential, train_set, val_set, TrainConfig(max_epochs=8, batch_size=5, learning_rate=1e-2, progress=False))
    losses = [h["train_loss"] for h in result.history]
    assert losses[-1] < 0.95 * losses[0] and result.history[-1]["loss"] < result.history[0]["loss"]
