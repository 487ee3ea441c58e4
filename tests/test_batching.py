"""Batches limited by atoms (batching.atom_limited): the limit holds in training and
validation, changes the number of optimizer steps, and reaches the train command."""

import json

import pytest
import torch

from fidelity_adapters import train, training
from fidelity_adapters.batching import atom_limited
from fidelity_adapters.cli import main
from fidelity_adapters.data import write_structures
from fidelity_adapters.training import TrainConfig
from test_training import cu_potential, emt_structures


def test_groups_keep_order_and_both_limits_and_a_large_structure_goes_alone():
    sizes = [3, 3, 3, 10, 2, 2, 2, 2, 2]
    positions = list(range(len(sizes)))
    groups = atom_limited(positions, sizes, batch_size=3, max_atoms=6)
    assert groups == [[0, 1], [2], [3], [4, 5, 6], [7, 8]]
    assert atom_limited(positions, sizes, batch_size=4, max_atoms=None) == [[0, 1, 2, 3], [4, 5, 6, 7], [8]]
    assert atom_limited([], [], batch_size=4, max_atoms=8) == []
    for batch_size, max_atoms in ((0, 8), (4, 0)):
        with pytest.raises(ValueError, match="must be >= 1"):
            atom_limited(positions, sizes, batch_size, max_atoms)
    with pytest.raises(ValueError, match="max_atoms = 0"):
        TrainConfig(max_atoms=0)


def test_no_training_or_validation_batch_exceeds_the_atom_limit(monkeypatch):
    data = emt_structures(12)  # 4-atom Cu cells
    seen = []
    loss_terms = training._loss_terms

    def recorded(potential, batch, config, training):
        seen.append((training, int(batch.natoms.sum())))
        return loss_terms(potential, batch, config, training)

    monkeypatch.setattr(training, "_loss_terms", recorded)
    config = TrainConfig(max_epochs=2, batch_size=4, max_atoms=8, progress=False)
    capped = train(cu_potential(), data[:8], data[8:], config)
    assert {atoms for is_training, atoms in seen if is_training} == {8}  # two cells per batch, not four
    assert max(atoms for is_training, atoms in seen if not is_training) == 8  # 3 'lo' and 1 'hi' cells: 8 + 4, 4
    assert capped.optimizer_steps == 8 and [h["steps"] for h in capped.history] == [4, 4]
    plain = train(cu_potential(), data[:8], data[8:], TrainConfig(max_epochs=2, batch_size=4, progress=False))
    assert plain.optimizer_steps == 4


def test_train_command_takes_the_atom_limit(tmp_path):
    write_structures(emt_structures(12), tmp_path / "cu.extxyz")
    run = ["train", str(tmp_path / "cu.extxyz"), "--epochs", "1", "--batch-size", "4", "--val-fraction", "0.25"]
    assert main([*run, "--out", str(tmp_path / "a"), "--max-atoms", "4"]) == 0
    checkpoint = torch.load(tmp_path / "a" / "checkpoint.pt", weights_only=True)
    assert json.loads(checkpoint["config"])["max_atoms"] == 4
    assert [h["steps"] for h in json.loads(checkpoint["history"])] == [9]  # 9 training cells, one per batch
