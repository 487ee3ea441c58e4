"""On-disk shards (issue 17): structures come back exactly, training streamed from shards takes
the same steps as training in memory (workers or not), the reference fit from streamed sums
equals least squares, and broken or misused shard directories are named."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from conftest import small_potential, water_dimer
from fidelity_adapters.cli import main
from fidelity_adapters.data import from_atoms, read_structures, write_structures
from fidelity_adapters.references import ReferenceSums
from fidelity_adapters.shards import ShardedStructures, decode, encode, write_shards
from fidelity_adapters.training import TrainConfig, train


def dimers(n=20):
    out = []
    rng = np.random.default_rng(0)
    for k in range(n):
        s = from_atoms(water_dimer(seed=k), fidelity="PBE" if k % 3 else "SCAN", label=f"dimer {k}")
        out.append(replace(s, energy=-4150.0 + 0.01 * k, forces=rng.normal(size=(6, 3)), info={"struct_id": k}))
    return out


def same(a, b) -> bool:
    arrays = ("numbers", "positions", "cell", "pbc", "forces", "stress")
    return all(
        (getattr(a, n) is None and getattr(b, n) is None) or np.array_equal(getattr(a, n), getattr(b, n)) for n in arrays
    ) and (a.fidelity, a.label, a.info) == (b.fidelity, b.label, b.info) and (a.energy == b.energy or not (a.has_energy or b.has_energy))


def test_a_structure_is_encoded_exactly():
    s = dimers(1)[0]
    s = replace(s, stress=np.arange(9.0).reshape(3, 3), info={"struct_id": np.int64(3), "T": np.float32(300.0), "tag": "liquid"})
    back = decode(encode(s))
    assert same(back, replace(s, info={"struct_id": 3, "T": 300.0, "tag": "liquid"}))
    unlabelled = replace(s, energy=float("nan"), forces=None, stress=None)
    back = decode(encode(unlabelled))
    assert not back.has_energy and back.forces is None and back.stress is None


def test_shards_give_back_every_structure_in_order(tmp_path):
    structures = dimers(20)
    write_shards(iter(structures), tmp_path / "data", shard_size=7)
    stored = ShardedStructures(tmp_path / "data", verify=True)
    assert len(stored) == 20 and len(stored.manifest["shards"]) == 3
    assert stored.manifest["fidelities"] == {"SCAN": 7, "PBE": 13}
    assert all(same(a, b) for a, b in zip(stored, structures))
    view = stored.subset([19, 3, 7])
    assert [s.label for s in view] == ["dimer 19", "dimer 3", "dimer 7"] and view[-1].label == "dimer 7"
    assert [s.label for s in stored[18:]] == ["dimer 18", "dimer 19"]
    with pytest.raises(IndexError):
        stored.subset([20])


def test_bad_shard_directories_are_named(tmp_path):
    with pytest.raises(ValueError, match="no manifest.json"):
        ShardedStructures(tmp_path)
    write_shards(dimers(4), tmp_path / "data", shard_size=2)
    with pytest.raises(ValueError, match="already holds prepared shards"):
        write_shards(dimers(4), tmp_path / "data")
    shard = tmp_path / "data" / "shard_00001.lmdb"
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0xFF
    shard.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="SHA-256 differs"):
        ShardedStructures(tmp_path / "data", verify=True)
    shard.unlink()
    with pytest.raises(ValueError, match="shard shard_00001.lmdb is missing"):
        ShardedStructures(tmp_path / "data")
    with pytest.raises(ValueError, match="no structures"):
        write_shards([], tmp_path / "empty")


@pytest.mark.parametrize("workers", [0, 1])
def test_training_streamed_from_shards_equals_training_in_memory(tmp_path, workers):
    structures = dimers(20)
    write_shards(structures, tmp_path / "data", shard_size=6)
    stored = ShardedStructures(tmp_path / "data")
    train_ids, val_ids = list(range(16)), list(range(16, 20))
    config = TrainConfig(max_epochs=2, batch_size=4, progress=False)
    in_memory = small_potential(["H", "O"], ["PBE", "SCAN"])
    train(in_memory, [structures[k] for k in train_ids], [structures[k] for k in val_ids], config)
    streamed = small_potential(["H", "O"], ["PBE", "SCAN"])
    result = train(streamed, stored.subset(train_ids), stored.subset(val_ids), replace(config, workers=workers))
    for name, value in in_memory.state_dict().items():
        torch.testing.assert_close(streamed.state_dict()[name], value, rtol=1e-12, atol=1e-12, msg=name)
    assert result.best_epoch >= 0 and np.isfinite(result.history[-1]["PBE/force_mae"])


def test_workers_are_refused_for_data_in_memory():
    structures = dimers(8)
    with pytest.raises(ValueError, match="workers=2 builds the graphs of on-disk data"):
        train(small_potential(["H", "O"], ["PBE", "SCAN"]), structures[:6], structures[6:], TrainConfig(max_epochs=1, workers=2, progress=False))


def test_reference_sums_equal_least_squares_and_name_the_span():
    rng = np.random.default_rng(1)
    structures = []
    for k in range(30):
        counts = rng.integers(1, 5, size=3)
        numbers = np.repeat([1, 6, 8], counts)
        energy = float(counts @ [-13.6, -1030.0, -2040.0] + rng.normal(scale=0.1))
        structures.append(dimers(1)[0].__class__(numbers, np.zeros((len(numbers), 3)), np.zeros((3, 3)), np.zeros(3, bool), "A", energy))
    sums = ReferenceSums.of(structures, [1, 6, 8], ["A", "B"])
    counts = np.array([[np.sum(s.numbers == z) for z in (1, 6, 8)] for s in structures], float)
    expected = np.linalg.lstsq(counts, [s.energy for s in structures], rcond=None)[0]
    np.testing.assert_allclose(sums.energies()[0], expected, rtol=1e-10)
    assert not sums.energies()[1].any()  # no B energies: zeros, and its span is everything
    np.testing.assert_allclose(sums.spans()[0], np.eye(3), atol=1e-9)
    water = ReferenceSums.of([replace(s, numbers=np.array([8, 1, 1] * (k + 1))) for k, s in enumerate(structures[:5])], [1, 6, 8], ["A"])
    span = water.spans()[0]
    np.testing.assert_allclose(span @ [2, 0, 1], [2, 0, 1], atol=1e-9)  # H2O is inside, H alone is not
    assert np.linalg.norm(span @ [1, 0, 0] - [1, 0, 0]) == pytest.approx(5**-0.5)  # H: 1/sqrt(5) off the H2O line


def test_prepare_then_train_from_the_directory(tmp_path, capsys):
    structures = dimers(12)
    write_structures(structures[:6], tmp_path / "a.extxyz")
    write_structures(structures[6:], tmp_path / "b.extxyz")
    for written, back in zip(structures, read_structures(tmp_path / "a.extxyz")):  # extxyz keeps 8 decimals
        assert (back.fidelity, back.energy, back.info) == (written.fidelity, written.energy, written.info)
        np.testing.assert_allclose(back.forces, written.forces, atol=1e-8)
    assert main(["prepare", str(tmp_path / "a.extxyz"), str(tmp_path / "b.extxyz"), "--out", str(tmp_path / "shards"), "--shard-size", "5"]) == 0
    assert "12 structures" in capsys.readouterr().out
    assert [s.label for s in ShardedStructures(tmp_path / "shards")][5:7] == ["a.extxyz:5", "b.extxyz:0"]
    run = ["train", str(tmp_path / "shards"), "--out", str(tmp_path / "run"), "--epochs", "1", "--batch-size", "4", "--val-fraction", "0.25"]
    assert main([*run, "--workers", "1"]) == 0
    assert (tmp_path / "run" / "model.safetensors").exists()
    assert main([*run, "--every", "2"]) == 2
    assert "give one directory" in capsys.readouterr().err
