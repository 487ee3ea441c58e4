"""Low-rank updates: the model starts unchanged, only the updates train, a trained update has
the chosen rank, and a saved model holds the merged weights; a fidelity's own update moves
that fidelity only."""

from __future__ import annotations

import pytest
import torch

from conftest import small_potential, water_dimer
from fidelity_adapters.low_rank import add_low_rank_updates, has_low_rank_updates, merge_in_place
from fidelity_adapters.serialization import load_potential, save_potential


def test_low_rank_update_trains_within_its_rank(tmp_path):
    potential = small_potential(["H", "O"], ["PBE", "SCAN"])
    graph = potential.graph(water_dimer(), "SCAN")
    before = float(potential(graph, forces=False)["energy"][0].detach())
    weights = {name: m.weight.detach().clone() for name, m in potential.backbone.named_modules() if isinstance(m, torch.nn.Linear)}
    n_layers = add_low_rank_updates(potential.backbone, rank=1)
    assert n_layers == len(weights) and has_low_rank_updates(potential)
    assert float(potential(graph, forces=False)["energy"][0].detach()) == before  # B = 0: unchanged
    trainable = [name for name, p in potential.backbone.named_parameters() if p.requires_grad]
    assert trainable and all(name.endswith((".a", ".b")) for name in trainable)
    optimizer = torch.optim.Adam([p for p in potential.parameters() if p.requires_grad], lr=1e-2)
    for _ in range(3):
        optimizer.zero_grad()
        potential(graph, forces=True, training=True)["forces"].pow(2).sum().backward()
        optimizer.step()
    save_potential(potential, tmp_path / "m.safetensors")  # during training: the merged weights, the model unchanged
    assert has_low_rank_updates(potential)
    plain = merge_in_place(potential)
    assert not has_low_rank_updates(plain)
    changes = [plain.backbone.get_submodule(name).weight - weight for name, weight in weights.items()]
    moved = [c for c in changes if float(c.abs().max()) > 1e-6]  # not the last state update: it reaches no output
    assert len(moved) >= len(changes) - 2
    assert all(int(torch.linalg.matrix_rank(c, rtol=1e-8)) == 1 for c in moved)  # each by a rank-1 matrix
    reloaded = load_potential(tmp_path / "m.safetensors")
    after = potential(graph, forces=False)["energy"][0].detach()
    assert float(reloaded(graph, forces=False)["energy"][0].detach()) == pytest.approx(float(after), abs=1e-10)
    with pytest.raises(ValueError, match="rank of a low-rank update must be >= 1"):
        add_low_rank_updates(small_potential(["H"], ["PBE"]).backbone, rank=0)


def test_a_fidelitys_own_update_moves_only_its_structures_and_survives_save_and_export(tmp_path):
    """Potential.add_low_rank_update: a mixed batch runs one fidelity at a time, the update
    acts on its fidelity's structures only (the others keep their predictions, in training
    too), and it is saved, reloaded and exported with the model."""
    from torch_geometric.data import Batch

    from fidelity_adapters import UnknownFidelityError
    from fidelity_adapters.export import FixedFidelityPotential, graph_inputs

    potential = small_potential(["H", "O"], ["PBE", "SCAN"])
    graphs = [potential.graph(water_dimer(seed), fidelity) for seed, fidelity in ((0, "PBE"), (1, "SCAN"), (2, "PBE"))]
    mixed = Batch.from_data_list(graphs)
    before = {k: v.detach() for k, v in potential(mixed).items()}
    update = potential.add_low_rank_update("SCAN", rank=2)
    torch.testing.assert_close(potential(mixed)["energy"].detach(), before["energy"], rtol=0, atol=1e-12)  # B = 0: nothing moves
    potential.requires_grad_(False)
    update.requires_grad_(True)
    optimizer = torch.optim.Adam(update.parameters(), lr=1e-2)
    for _ in range(3):
        optimizer.zero_grad()
        potential(mixed, training=True)["forces"].pow(2).sum().backward()
        optimizer.step()
    after = {k: v.detach() for k, v in potential(mixed).items()}
    pbe, scan = [0, 2], [1]
    torch.testing.assert_close(after["energy"][pbe], before["energy"][pbe], rtol=0, atol=1e-12)
    assert float((after["energy"][scan] - before["energy"][scan]).abs().max()) > 1e-6
    for k, graph in enumerate(graphs):  # the mixed batch gives each structure what it gets alone
        alone = potential(graph)
        assert float(alone["energy"][0]) == pytest.approx(float(after["energy"][k]), abs=1e-12)
        torch.testing.assert_close(alone["forces"], after["forces"][mixed.batch == k], rtol=0, atol=1e-12)

    save_potential(potential, tmp_path / "m.safetensors")
    reloaded = load_potential(tmp_path / "m.safetensors")
    assert [(u.fidelity, u.rank) for u in reloaded.fidelity_low_rank] == [(1, 2)]
    torch.testing.assert_close(reloaded(mixed)["energy"].detach(), after["energy"], rtol=0, atol=1e-12)
    exported = FixedFidelityPotential(potential, "SCAN")  # the update merged into the weights of one fidelity
    assert not len(exported.potential.fidelity_low_rank)
    energy, forces, _ = exported(*graph_inputs(graphs[1]))
    assert float(energy) == pytest.approx(float(after["energy"][1]), abs=1e-10)
    torch.testing.assert_close(forces, after["forces"][mixed.batch == 1], rtol=0, atol=1e-10)
    torch.testing.assert_close(potential(mixed)["energy"].detach(), after["energy"], rtol=0, atol=1e-12)  # the copy left it alone
    with pytest.raises(ValueError, match="has a low-rank update already"):
        potential.add_low_rank_update("SCAN")
    with pytest.raises(UnknownFidelityError):
        potential.add_low_rank_update("r2SCAN")


@pytest.mark.parametrize("recipe", ["mace_style_potential", "nequip_style_potential"])
def test_a_fidelitys_own_update_reaches_the_e3nn_layers_path_by_path(recipe):
    """On the e3nn backbones the update covers every e3nn Linear and every tensor product with
    weights of its own (a rank-r matrix per path, as e3nn lays the path's weights out), the
    radial MLPs and the nn.Linear layers; the model stays rotation-equivariant with it, the
    other fidelity is untouched, and a one-fidelity copy (what an export runs) predicts what
    the potential does."""
    from e3nn import o3
    from e3nn.nn import FullyConnectedNet
    from scipy.spatial.transform import Rotation

    import fidelity_adapters
    from fidelity_adapters.export import FixedFidelityPotential, graph_inputs

    potential = getattr(fidelity_adapters, recipe)(["H", "O"], ["PBE", "SCAN"], channels=8, n_basis=6, radial_hidden=8,
                                                   readout_hidden=8, lmax=2).double()  # fmt: skip
    modules = list(potential.backbone.modules())
    e3nn_linears = [m for m in modules if isinstance(m, o3.Linear)]
    products = [m for m in modules if isinstance(m, o3.TensorProduct) and isinstance(m.weight, torch.nn.Parameter)]  # the convolutions' get their weights
    radial = [layer for m in modules if isinstance(m, FullyConnectedNet) for layer in m.children()]
    plain = [m for m in modules if isinstance(m, torch.nn.Linear)]
    weights = [m.weight.detach().clone() for m in e3nn_linears + products]
    dimer = water_dimer()
    before = {f: potential(potential.graph(dimer, f)) for f in ("PBE", "SCAN")}
    update = potential.add_low_rank_update("SCAN", rank=2)
    assert len(update.updates) == len(e3nn_linears) + len(products) + len(radial) + len(plain) and e3nn_linears and products and radial
    torch.manual_seed(1)
    with torch.no_grad():  # a trained update, as far as these checks go: every B nonzero
        for name, parameter in update.named_parameters():
            if name.endswith(".b"):
                parameter.normal_(0.0, 0.3)

    def as_matrix(change):  # a "uvw" path (u, v, w) as (u v, w); one weight per channel (u,) as (u, 1)
        return change.reshape(-1, change.shape[-1]) if change.dim() > 1 else change.reshape(-1, 1)

    with update.applied():
        for layer, weight in zip(e3nn_linears + products, weights):
            weighted = (lambda ins: ins.i_in != -1) if isinstance(layer, o3.Linear) else (lambda ins: ins.has_weight)
            paths = [k for k, ins in enumerate(layer.instructions) if weighted(ins)]
            changes = [as_matrix(layer.weight_view_for_instruction(k, layer.weight) - layer.weight_view_for_instruction(k, weight)).detach() for k in paths]
            assert all(int(torch.linalg.matrix_rank(c, rtol=1e-10)) == min(2, *c.shape) for c in changes)
    after = {f: potential(potential.graph(dimer, f)) for f in ("PBE", "SCAN")}
    torch.testing.assert_close(after["PBE"]["forces"], before["PBE"]["forces"], rtol=0, atol=1e-12)
    assert float((after["SCAN"]["forces"] - before["SCAN"]["forces"]).abs().max()) > 1e-4

    rotation = Rotation.random(random_state=3).as_matrix()
    turned = dimer.copy()
    turned.positions = dimer.positions @ rotation.T
    rotated = potential(potential.graph(turned, "SCAN"))
    assert float(rotated["energy"]) == pytest.approx(float(after["SCAN"]["energy"]), abs=1e-10)
    torch.testing.assert_close(rotated["forces"], after["SCAN"]["forces"] @ torch.tensor(rotation.T), rtol=0, atol=1e-10)

    energy, forces, _ = FixedFidelityPotential(potential, "SCAN")(*graph_inputs(potential.graph(dimer, "SCAN")))
    assert float(energy) == pytest.approx(float(after["SCAN"]["energy"]), abs=1e-10)
    torch.testing.assert_close(forces, after["SCAN"]["forces"], rtol=0, atol=1e-10)
    torch.testing.assert_close(potential(potential.graph(dimer, "SCAN"))["forces"], after["SCAN"]["forces"], rtol=0, atol=1e-12)


def test_shared_updates_of_e3nn_layers_merge_save_and_reload(tmp_path):
    """trainable="lowrank" on an e3nn backbone: the merged weights (saved during training, or
    written in place at the end) predict what the model with its updates does."""
    from fidelity_adapters import mace_style_potential

    potential = mace_style_potential(["H", "O"], ["PBE", "SCAN"], channels=8, n_basis=6, radial_hidden=8, readout_hidden=8).double()
    n_layers = add_low_rank_updates(potential.backbone, rank=2)
    assert n_layers > 2  # e3nn Linear and radial layers too, not only the two nn.Linear
    torch.manual_seed(2)
    with torch.no_grad():
        for name, parameter in potential.backbone.named_parameters():
            if name.endswith(".b"):
                parameter.normal_(0.0, 0.3)
    graph = potential.graph(water_dimer(), "SCAN")
    expected = potential(graph)
    save_potential(potential, tmp_path / "m.safetensors")
    reloaded = load_potential(tmp_path / "m.safetensors")
    assert not has_low_rank_updates(reloaded)
    torch.testing.assert_close(reloaded(graph)["forces"], expected["forces"], rtol=0, atol=1e-10)
    merged = merge_in_place(potential)
    assert not has_low_rank_updates(merged)
    torch.testing.assert_close(merged(graph)["forces"], expected["forces"], rtol=0, atol=1e-10)
