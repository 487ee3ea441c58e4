"""Low-rank updates: the model starts unchanged, only the updates train, a trained update has
the chosen rank, and a saved model holds the merged weights."""

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
