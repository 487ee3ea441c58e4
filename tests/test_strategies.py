"""Strategies on one tiny shared-structure data set: the split protocol, each strategy trains
and predicts, transfer learning freezes what it says, Delta = lofi + Delta, heads are
independent."""

from dataclasses import replace

import numpy as np
import pytest
import torch
from torch_geometric.data import Batch

from conftest import CU_OPTIONS as OPTIONS
from conftest import paired_cu
from fidelity_adapters import paper_split
from fidelity_adapters.recipes import m3gnet_potential
from fidelity_adapters.strategies import FROM_SCRATCH, Task, fit, freeze
from fidelity_adapters.strategies.delta import difference_labels
from fidelity_adapters.training import TrainConfig


def task_for(structures, tmp_path, fraction=0.2, **options):
    split = paper_split(structures, "lo", "hi", hifi_fraction=fraction, seed=0)
    config = TrainConfig(max_epochs=2, batch_size=8, progress=False)
    return Task(structures, split, ["lo"], "hi", config, tmp_path / "run", tmp_path / "lofi", dict(OPTIONS), **options)


def struct_ids(structures, ids):
    return {structures[k].info["struct_id"] for k in ids}


@pytest.mark.parametrize("shared", [True, False])
def test_split_keeps_test_out_of_training_and_honours_fractions(shared):
    data = paired_cu(40, shared=shared)
    for fraction in (0.1, 0.3):
        split = paper_split(data, "lo", "hi", hifi_fraction=fraction, seed=3)
        base = 40 if shared else 20
        assert len(split.hifi_train) == round(fraction * base)
        assert len(split.validation) + len(split.test) == round(0.2 * base)
        held = struct_ids(data, split.validation + split.test)
        assert not held & struct_ids(data, split.lofi_train + split.hifi_train)
        assert not struct_ids(data, split.test) & struct_ids(data, split.lofi_train + split.hifi_train + split.lofi_validation)
        assert not set(split.lofi_validation) & set(split.lofi_train)
        assert {data[k].fidelity for k in split.hifi_train + split.validation + split.test} == {"hi"}
        assert {data[k].fidelity for k in split.lofi_train} == {"lo"}
        if shared:  # hifi training geometries come from the lofi training geometries
            assert struct_ids(data, split.hifi_train) <= struct_ids(data, split.lofi_train)
    other_seed = paper_split(data, "lo", "hi", hifi_fraction=0.3, seed=4)
    assert other_seed.test != split.test


def test_split_is_independent_of_fraction_and_uses_the_chooser(tmp_path):
    data = paired_cu(40)
    small, large = (paper_split(data, "lo", "hi", hifi_fraction=f, seed=1) for f in (0.1, 0.3))
    assert small.test == large.test and small.lofi_train == large.lofi_train
    picked = paper_split(data, "lo", "hi", hifi_fraction=0.1, seed=1, choose=lambda ids, k: sorted(ids)[:k])
    assert picked.hifi_train == sorted(picked.hifi_train)[:4] and picked.test == small.test
    small.save(tmp_path / "split.json")
    assert type(small).load(tmp_path / "split.json") == small
    with pytest.raises(ValueError, match="only"):
        paper_split(data, "lo", "hi", hifi_fraction=0.9, seed=1)
    with pytest.raises(ValueError, match="distinct"):
        paper_split(data, "lo", "hi", hifi_fraction=0.1, seed=1, choose=lambda ids, k: [ids[0]] * k)


@pytest.mark.parametrize("strategy", FROM_SCRATCH)
def test_each_strategy_trains_and_predicts_the_target(strategy, tmp_path):
    data = paired_cu()
    task = task_for(data, tmp_path)
    fitted = fit(strategy, task)
    test = task.pick(task.split.test)
    predictions = fitted.predict(test)
    assert len(predictions) == len(test)
    for s, p in zip(test, predictions):
        assert np.isfinite(p["energy"]) and p["forces"].shape == s.forces.shape
        # measured at most 0.07 eV/atom; a model that missed the 2 eV/atom shift between the levels fails
        assert abs(p["energy"] - s.energy) / len(s) < 0.5
    assert (tmp_path / "run" / "best_model.safetensors").exists()


def test_unknown_strategy_is_an_error(tmp_path):
    with pytest.raises(ValueError, match="known"):
        fit("mfl", task_for(paired_cu(), tmp_path))


def test_transfer_learning_freezes_exactly_the_named_layers(tmp_path):
    task = task_for(paired_cu(), tmp_path, freeze=("atom_embedding", "blocks.0"))
    fitted = fit("transfer", task)
    before = dict(fitted.potentials["pretrained"].backbone.named_parameters())
    after = dict(fitted.potentials["transfer"].backbone.named_parameters())
    frozen = [n for n in after if n.startswith(("atom_embedding.", "blocks.0."))]
    assert frozen and all(torch.equal(before[n], after[n]) for n in frozen)
    assert any(not torch.equal(before[n], after[n]) for n in after if n not in frozen)
    assert "atom_embedding" in fitted.note
    # references re-fitted for the hifi level: about 2 eV/atom above the lofi ones
    hifi_reference = float(fitted.potentials["transfer"].fidelity_state.elemental_energies[0, 0])
    lofi_reference = float(fitted.potentials["pretrained"].fidelity_state.elemental_energies[0, 0])
    assert hifi_reference == pytest.approx(1.1 * lofi_reference + 2.0, abs=0.05)
    assert fitted.potentials["transfer"].fidelity_state.scale == fitted.potentials["pretrained"].fidelity_state.scale
    with pytest.raises(ValueError, match="matches no backbone parameter"):
        freeze(m3gnet_potential(["Cu"], ["hi"], **OPTIONS), ["atom_embeding"])


def test_references_fitted_around_a_trained_network_leave_no_mean_error():
    """Transfer learning refits the references around the pretrained network: right after the
    refit its mean energy error on those structures is zero; fitted to the raw labels (as for
    a fresh network) it is the network's own mean output."""
    hifi = [s for s in paired_cu() if s.fidelity == "hi"]
    potential = m3gnet_potential(["Cu"], ["hi"], **OPTIONS)
    per_atom = lambda: np.array([p["energy"] for p in potential.predict(hifi, "hi")]) / [len(s) for s in hifi]  # noqa: E731
    truth = np.array([s.energy / len(s) for s in hifi])
    network = potential.energies(hifi) / [len(s) for s in hifi]  # references still zero: the network's own output
    potential.fit_references(hifi, refit_scale=False)
    assert np.mean(per_atom() - truth) == pytest.approx(np.mean(network), abs=1e-3)
    assert abs(np.mean(network)) > 0.01  # an untrained network's output is not zero: the test can fail
    potential.fit_references(hifi, refit_scale=False, around_network=True)
    assert np.mean(per_atom() - truth) == pytest.approx(0.0, abs=1e-6)


def test_delta_prediction_is_lofi_plus_delta_and_labels_come_from_partners(tmp_path):
    data = paired_cu()
    task = task_for(data, tmp_path)
    fitted = fit("delta", task)
    test = task.pick(task.split.test)
    lofi, delta = fitted.potentials["lofi"], fitted.potentials["delta"]
    combined = fitted.predict(test)
    for c, low, d in zip(combined, lofi.predict(test, "lo"), delta.predict(test, "delta")):
        assert c["energy"] == pytest.approx(low["energy"] + d["energy"], abs=1e-9)
        np.testing.assert_allclose(c["forces"], low["forces"] + d["forces"], atol=1e-9)
    hifi = task.pick(task.split.hifi_train)
    labels, counts = difference_labels(task, hifi, lofi)
    assert counts["energy_label"] == len(hifi) and counts["energy_model"] == 0
    partner = {s.info["struct_id"]: s for s in data if s.fidelity == "lo"}
    for s, d in zip(hifi, labels):
        assert d.energy == pytest.approx(s.energy - partner[s.info["struct_id"]].energy)
    unpaired = [replace(s, info={**s.info, "struct_id": -1}) for s in hifi]  # no lofi partner: the model fills in
    _, counts = difference_labels(task, unpaired, lofi)
    assert counts["energy_model"] == len(hifi) and counts["forces_model"] == len(hifi)


def test_multihead_heads_are_independent():
    torch.manual_seed(0)
    potential = m3gnet_potential(["Cu"], ["lo", "hi"], state_dim=0, n_heads=2, **OPTIONS).double()
    data = paired_cu(4)
    lo = [s for s in data if s.fidelity == "lo"]
    batch = Batch.from_data_list([potential.graph(s) for s in lo])
    energy_lo = potential(batch, forces=False)["energy"]
    energy_lo.sum().backward()
    heads = potential.backbone.readouts
    assert all(p.grad is None or not p.grad.any() for p in heads[1].parameters())
    assert any(p.grad is not None and p.grad.any() for p in heads[0].parameters())
    with torch.no_grad():
        for p in heads[1].parameters():
            p.add_(1.0)
    assert torch.equal(potential(batch, forces=False)["energy"], energy_lo.detach())
    hi_batch = Batch.from_data_list([potential.graph(s, "hi") for s in lo])
    assert not torch.allclose(potential(hi_batch, forces=False)["energy"], energy_lo)
    with pytest.raises(ValueError, match="readout heads"):
        m3gnet_potential(["Cu"], ["lo", "mid", "hi"], state_dim=0, n_heads=2, **OPTIONS)


def test_e3nn_backbones_normalise_messages_by_the_datas_neighbour_count(tmp_path):
    from fidelity_adapters.neighbors import average_neighbors
    from fidelity_adapters.serialization import load_potential, save_potential

    data = paired_cu()
    task = task_for(data, tmp_path, backbone="MACEStyle")
    task.backbone_options = {"channels": 4, "lmax": 1, "cutoff": 3.0}
    potential = task.potential(["lo", "hi"])
    expected = average_neighbors(task.pick(task.split.lofi_train), 3.0)
    assert expected != 10.0 and potential.backbone.config["avg_neighbors"] == pytest.approx(expected)
    assert [layer.conv.avg_neighbors for layer in potential.backbone.layers] == [pytest.approx(expected)] * len(potential.backbone.layers)
    save_potential(potential, tmp_path / "m.safetensors")
    assert load_potential(tmp_path / "m.safetensors").backbone.config["avg_neighbors"] == pytest.approx(expected)
    assert task.potential(["lo", "hi"], avg_neighbors=7.0).backbone.config["avg_neighbors"] == 7.0  # a given value wins
