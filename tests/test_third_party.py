"""Real third-party models wrapped unchanged (fidelity_adapters.third_party): mace-torch's
MACE / ScaleShiftMACE and nequip's NequIPGNNModel. The wrapped single-fidelity model gives the
model's own energy, forces and stress (its own neighbour list and autograd, periodic or not);
with two fidelities the FiLM injected by hooks keeps E(3) equivariance, changes the energy and
gets gradients; a few epochs on bundled clusters lower the loss. Saved and loaded (weights
plus the library, its version, the model's class or builder and its config as JSON), a
potential comes back bit for bit; edited class, function or builder names are refused,
another library version warns, a missing library is named with its pip extra, a nequip model
built without build_nequip is refused. The mace tests need the [mace] extra (e3nn 0.4.4: its
own environment), the nequip tests the [nequip] one."""

import importlib
import os
import random
import subprocess
import sys
import warnings
from importlib.metadata import version

import numpy as np
import pytest
import torch
from torch import nn
from torch_geometric.data import Batch

from conftest import water_dimer
from fidelity_adapters import TrainConfig, load_potential, save_potential, train, wrap
from fidelity_adapters.bundled import water_clusters
from fidelity_adapters.serialization import check_metadata, read_metadata
from fidelity_adapters.third_party import adapt, wrap_third_party
from test_serialization import _rewrite

E0 = {"H": -13.6, "O": -2041.8}  # large per-element offsets, as in trained models


def require(library: str):
    try:
        return importlib.import_module(library)
    except ImportError:
        extra = "mace" if library == "mace" else "nequip"
        pytest.skip(f"{library} is not installed (pip install -e '.[{extra}]'; see docs/third_party.md)")


def tiny_mace(cls_name="ScaleShiftMACE", dtype=torch.float64):
    require("mace")
    from e3nn import o3
    from mace import modules

    block = modules.interaction_classes["RealAgnosticResidualInteractionBlock"]
    options = dict(
        r_max=4.0, num_bessel=6, num_polynomial_cutoff=5, max_ell=2, interaction_cls=block, interaction_cls_first=block,
        num_interactions=2, num_elements=2, hidden_irreps=o3.Irreps("8x0e+8x1o"), MLP_irreps=o3.Irreps("8x0e"),
        atomic_energies=np.array([E0["H"], E0["O"]]), avg_num_neighbors=4.0, atomic_numbers=[1, 8], correlation=2,
        gate=torch.nn.functional.silu, radial_MLP=[8],
    )  # fmt: skip
    if cls_name == "ScaleShiftMACE":
        options.update(atomic_inter_scale=1.3, atomic_inter_shift=0.1)
    default = torch.get_default_dtype()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        torch.set_default_dtype(dtype)  # mace builds in the default dtype
        try:
            return getattr(modules, cls_name)(**options)
        finally:
            torch.set_default_dtype(default)


def tiny_nequip(dtype="float64", type_names=("H", "O")):
    """Built through build_nequip (nequip_global_state, and a recipe that makes it saveable)."""
    require("nequip")
    from fidelity_adapters.third_party import build_nequip

    return build_nequip(
        "NequIPGNNModel", seed=0, model_dtype=dtype, type_names=list(type_names), r_max=4.0, num_layers=2, l_max=1,
        parity=True, num_features=8, radial_mlp_depth=1, radial_mlp_width=8, avg_num_neighbors=4.0,
        per_type_energy_scales=1.2, per_type_energy_shifts=dict(zip(type_names, E0.values())),
    )  # fmt: skip


MODELS = {"mace": tiny_mace, "mace-plain": lambda: tiny_mace("MACE"), "nequip": tiny_nequip}


def periodic_water():
    atoms = water_dimer()
    atoms.cell = [[7.0, 0.0, 0.0], [1.0, 6.5, 0.0], [0.5, 0.8, 6.8]]  # triclinic; images within the cutoff
    atoms.pbc = True
    return atoms


def own_prediction(model, atoms):
    """Energy, forces and stress from the third-party model itself: its neighbour list, its autograd."""
    default = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)  # both read positions in the default dtype: no float32 rounding
    try:
        return _own_prediction(model, atoms)
    finally:
        torch.set_default_dtype(default)


def _own_prediction(model, atoms):
    if type(model).__module__.startswith("mace"):
        from mace import data as mace_data
        from mace.tools import AtomicNumberTable, torch_geometric

        config = mace_data.config_from_atoms(atoms)
        item = mace_data.AtomicData.from_config(config, z_table=AtomicNumberTable([1, 8]), cutoff=float(model.r_max))
        batch = next(iter(torch_geometric.dataloader.DataLoader([item], batch_size=1))).to_dict()
        dtype = next(model.parameters()).dtype
        batch = {k: v.to(dtype) if v.is_floating_point() else v for k, v in batch.items()}
        out = model(batch, compute_force=True, compute_stress=bool(atoms.pbc.any()))
        return float(out["energy"][0].detach()), out["forces"].detach(), out["stress"][0].detach() if atoms.pbc.any() else None
    from nequip.data import from_ase
    from nequip.data.transforms import ChemicalSpeciesToAtomTypeMapper, NeighborListTransform

    data = ChemicalSpeciesToAtomTypeMapper(model_type_names=["H", "O"])(from_ase(atoms))
    data = NeighborListTransform(r_max=4.0)(data)
    out = model(data)
    assert data["pos"].dtype == torch.float64
    stress = out["stress"].reshape(3, 3).detach() if atoms.pbc.any() else None
    return float(out["total_energy"].detach().reshape(())), out["forces"].detach(), stress


@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize("periodic", [False, True])
def test_single_fidelity_equals_the_model_itself(name, periodic):
    model = MODELS[name]()
    atoms = periodic_water() if periodic else water_dimer()
    energy, forces, stress = own_prediction(model, atoms)
    potential = wrap_third_party(model, ["PBE"])
    assert potential.injector is None and potential.backbone.cutoff == 4.0
    out = potential(potential.graph(atoms, "PBE"), forces=True, stress=periodic)
    assert float(out["energy"][0]) == pytest.approx(energy, rel=1e-12, abs=1e-9)
    torch.testing.assert_close(out["forces"], forces.to(out["forces"].dtype), rtol=0, atol=1e-9)
    if periodic:
        # mace "stress" = -virial / V, nequip "stress" = -virial / V too: both (1/V) dE/dstrain, as ours
        torch.testing.assert_close(out["stress"][0], stress.to(out["stress"].dtype), rtol=0, atol=1e-9)
    # the model's own offsets moved into our references: the network part has none of them
    network = potential.backbone(Batch.from_data_list([potential.graph(atoms, "PBE")]), *_vectors(potential, atoms), None)
    assert network.abs().max() < 50
    offsets = torch.tensor([E0["H"], E0["O"]], dtype=torch.float64)
    torch.testing.assert_close(potential.fidelity_state.elemental_energies[0], offsets)
    # the model called directly afterwards is unchanged (mace's E0 is zeroed only inside our calls)
    assert own_prediction(model, atoms)[0] == pytest.approx(energy, rel=1e-14)


def test_float32_built_mace_moved_to_float64_has_exact_coefficients():
    """mace makes its U matrices in the dtype it is built in; wrapped and moved to float64, a
    float32-built model gets them recomputed in float64 (equal bit for bit to a float64 build's;
    rounded to float32 they were 1e-7 off and broke rotation invariance at 3e-10 eV)."""

    def u_matrices(potential):
        return {n: b for n, b in potential.named_buffers() if ".U_matrix_" in n}

    exact = u_matrices(wrap_third_party(tiny_mace(dtype=torch.float64), ["PBE"]))
    moved = u_matrices(wrap_third_party(tiny_mace(dtype=torch.float32), ["PBE"]).double())
    assert sorted(moved) == sorted(exact) and len(exact) >= 4
    for name, buffer in moved.items():
        assert buffer.dtype == torch.float64 and torch.equal(buffer, exact[name]), name
    pointers = [b.data_ptr() for b in moved.values()]
    assert len(set(pointers)) == len(pointers)  # a cached matrix is copied: safetensors refuses shared memory


def _vectors(potential, atoms):
    from fidelity_adapters.potential import edge_vectors_of

    batch = Batch.from_data_list([potential.graph(atoms, "PBE")])
    return (edge_vectors_of(batch, batch.pos.double(), batch.cell.double()),)


@pytest.fixture(scope="module", params=["mace", "nequip"])
def two_fidelities(request):
    model = MODELS[request.param]()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return wrap_third_party(model, ["PBE", "SCAN"], inject=("embedding", "messages", "readout"), inject_dim=8)


def test_fidelity_changes_energy_and_gets_gradients(two_fidelities):
    potential = two_fidelities
    assert sorted(potential.injector.films) == ["embedding", "messages", "readout"]
    dimer = water_dimer()
    batch = Batch.from_data_list([potential.graph(dimer, f) for f in ("PBE", "SCAN")])
    out = potential(batch, forces=True, training=True)
    assert abs(float(out["energy"][0] - out["energy"][1])) > 1e-6  # references equal: the network differs
    assert (out["forces"][:6] - out["forces"][6:]).abs().max() > 1e-6
    weight = potential.fidelity_state.embedding.weight
    loss = out["energy"].sum() + out["forces"].pow(2).sum()  # a force loss: double backward through the hooks
    grads = torch.autograd.grad(loss, [weight, *potential.injector.parameters()])
    assert bool(grads[0].abs().sum(1).gt(0).all()) and all(g.abs().sum() > 0 for g in grads[1:])


@pytest.mark.parametrize("name", ["mace", "nequip"])
def test_a_fidelitys_own_update_reaches_the_model_and_moves_that_fidelity_only(name):
    """Potential.add_low_rank_update on a wrapped model: its e3nn Linear layers and its tensor
    products with weights of their own (mace's skip connection) get an update per path (e3nn
    0.4.4 for mace-torch, >= 0.6 for nequip), and with every update nonzero the SCAN structure
    moves while the PBE one keeps its prediction."""
    from fidelity_adapters.low_rank import PathsLowRankUpdate

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        potential = wrap_third_party(MODELS[name](), ["PBE", "SCAN"], inject_dim=8)
        batch = Batch.from_data_list([potential.graph(water_dimer(), f) for f in ("PBE", "SCAN")])
        before = potential(batch)
        update = potential.add_low_rank_update("SCAN", rank=2)
        assert any(isinstance(u, PathsLowRankUpdate) for u in update.updates)
        with torch.no_grad():
            for parameter_name, parameter in update.named_parameters():
                if parameter_name.endswith(".b"):
                    parameter.normal_(0.0, 0.3)
    after = potential(batch)
    torch.testing.assert_close(after["forces"][:6], before["forces"][:6], rtol=0, atol=1e-12)
    assert float((after["forces"][6:] - before["forces"][6:]).abs().max()) > 1e-4


@pytest.mark.parametrize("name", ["mace", "nequip"])
def test_training_loss_falls(name):
    data = water_clusters()
    pbe = [s for s in data if s.fidelity == "PBE"][:8]
    scan = [s for s in data if s.fidelity == "SCAN"][8:14]
    train_set, val_set = pbe[:6] + scan[:4], pbe[6:] + scan[4:]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        potential = wrap_third_party(MODELS[name](), ["PBE", "SCAN"], inject_dim=8)
    result = train(potential, train_set, val_set, TrainConfig(max_epochs=6, batch_size=5, learning_rate=1e-2, progress=False))
    losses = [h["train_loss"] for h in result.history]
    assert losses[-1] < 0.95 * losses[0] and result.history[-1]["loss"] < result.history[0]["loss"]


@pytest.mark.parametrize("name", ["mace", "nequip"])
def test_explicit_adapter_errors(name, monkeypatch):
    model = MODELS[name]()
    backbone = adapt(model)
    assert adapt(backbone) is backbone and backbone.config["n_elements"] == 2
    with torch.random.fork_rng(devices=[]):
        potential = wrap(backbone, ["PBE", "SCAN"], ["H", "O"])  # plain wrap: references start at zero
    assert potential.injector.places == ["messages"] and not potential.fidelity_state.elemental_energies.any()
    with pytest.raises(ValueError, match="element"):
        adapt(MODELS[name](), ["H", "C"])
    with pytest.raises(ValueError, match=r"known places: \['embedding', 'messages', 'readout'\]"):
        wrap_third_party(MODELS[name](), ["PBE", "SCAN"], inject=("edges",))
    other = adapt(MODELS[name]())
    monkeypatch.setattr(type(other), "injection_sites", lambda self: {"messages": [], "readout": []})
    with pytest.raises(ValueError, match=r"has no 'messages' injection site; it offers \[\]"):
        wrap(other, ["PBE", "SCAN"], ["H", "O"])
    with pytest.raises(TypeError, match="needs its adapter"):
        wrap(MODELS[name](), ["PBE", "SCAN"], ["H", "O"])


def test_wrap_third_party_refuses_other_models():
    with pytest.raises(TypeError, match="not a mace-torch, nequip or sevenn model"):
        wrap_third_party(nn.Linear(2, 2), ["PBE"])


def test_nequip_type_names_and_global_state():
    require("nequip")
    import nequip.model  # noqa: F401  first: importing nequip's modules draws from python's generator (not ours to restore)

    dtype, state, np_state, py_state = torch.get_default_dtype(), torch.get_rng_state(), np.random.get_state(), random.getstate()
    model = tiny_nequip(type_names=("hydrogen", "oxygen"))
    assert torch.get_default_dtype() == dtype and torch.equal(torch.get_rng_state(), state)
    assert np.array_equal(np.random.get_state()[1], np_state[1]) and random.getstate() == py_state
    assert not torch._dynamo.config.capture_dynamic_output_shape_ops and not torch._dynamo.config.capture_scalar_outputs
    with pytest.raises(ValueError, match="not chemical symbols"):
        adapt(model)
    backbone = adapt(model, ["H", "O"])
    assert backbone.reference_energies().tolist() == [E0["H"], E0["O"]]


def test_our_packages_import_first_under_e3nn_0_4_4():
    """e3nn 0.4.4 (mace's pin) cannot be imported under torch >= 2.6's weights-only torch.load
    unless `slice` is allowlisted: our packages do that before they import e3nn, so they work
    whether or not mace was imported first (mace itself sets TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD)."""
    e3nn = require("e3nn")
    if tuple(int(x) for x in e3nn.__version__.split(".")[:2]) >= (0, 5):
        pytest.skip(f"e3nn {e3nn.__version__} imports under weights-only loading; the check is for 0.4.4 ([mace] env)")
    env = {k: v for k, v in os.environ.items() if k != "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD"}  # mace may have set it here
    for module in ("fidelity_adapters", "backbones"):
        run = subprocess.run([sys.executable, "-c", f"import {module}"], env=env, capture_output=True, text=True)
        assert run.returncode == 0, f"import {module} under e3nn 0.4.4 failed:\n{run.stderr[-2000:]}"


# --- saving and loading -------------------------------------------------------------------

INJECT = ("embedding", "messages", "readout")
PIP_NAME = {"mace": "mace-torch", "nequip": "nequip"}


def trained_potential(name: str, fidelities=("PBE", "SCAN")):
    """A wrapped model whose every weight and a reference row moved, as after training, so
    that freshly built defaults cannot pass for the saved values."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        options = dict(inject=INJECT, inject_dim=8) if len(fidelities) > 1 else {}
        potential = wrap_third_party(MODELS[name](), list(fidelities), **options)
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for parameter in potential.parameters():
            parameter.add_(1e-3 * torch.randn(parameter.shape, generator=generator, dtype=parameter.dtype))
        potential.fidelity_state.elemental_energies[-1] += 0.25
    return potential.eval()


def predictions(potential, fidelity):
    out = potential(potential.graph(periodic_water(), fidelity), forces=True, stress=True)
    return {key: value.detach() for key, value in out.items()}


@pytest.fixture
def saved(request, tmp_path):
    """(potential, path of its saved file) for the model named by the test's parameter."""
    potential = trained_potential(request.param)
    path = tmp_path / "model.safetensors"
    save_potential(potential, path)
    return potential, path


@pytest.mark.parametrize(
    "name, fidelities", [("mace-plain", ("PBE", "SCAN")), ("mace", ("PBE",)), ("nequip", ("PBE", "SCAN")), ("nequip", ("PBE",))]
)
def test_round_trip_is_bit_for_bit(name, fidelities, tmp_path):
    """With a FiLM at every place (two fidelities) and without one (one fidelity)."""
    potential = trained_potential(name, fidelities)
    path = tmp_path / "model.safetensors"
    save_potential(potential, path)
    config = read_metadata(path)["backbone_config"]
    model_name = {"mace-plain": "MACE", "mace": "ScaleShiftMACE", "nequip": "NequIPGNNModel"}[name]
    lib = name.split("-")[0]  # mace-plain: mace
    assert (config["library"], config["version"], config["model"]) == (lib, version(PIP_NAME[lib]), model_name)
    assert config["options"] == ({"head": "Default"} if lib == "mace" else {"elements": [1, 8]})

    loaded = load_potential(path).eval()
    assert type(loaded.backbone.model) is type(potential.backbone.model) and loaded.fidelities == list(fidelities)
    assert (loaded.injector is None) == (len(fidelities) == 1)
    assert_same_model(potential, loaded, fidelities)


def assert_same_model(potential, loaded, fidelities):
    """The same parameter names and values, and the same predictions at each fidelity, bit for bit."""
    saved_state, loaded_state = potential.state_dict(), loaded.state_dict()
    assert saved_state.keys() == loaded_state.keys()
    assert [k for k in saved_state if not torch.equal(saved_state[k], loaded_state[k])] == []
    for fidelity in fidelities:
        want, got = predictions(potential, fidelity), predictions(loaded, fidelity)
        assert want.keys() == got.keys() and all(torch.equal(want[k], got[k]) for k in want), fidelity


@pytest.mark.parametrize("name", ["mace", "nequip"])
def test_a_fidelitys_own_update_is_saved_and_reloaded_bit_for_bit(name, tmp_path):
    """A wrapped model fine-tuned with the target's own low-rank update (every B nonzero, as
    after training) reloads with the update in place: the same parameters and predictions at
    both fidelities."""
    potential = trained_potential(name)
    update = potential.add_low_rank_update("SCAN", rank=2)
    generator = torch.Generator().manual_seed(2)
    with torch.no_grad():
        for parameter in update.parameters():
            parameter.add_(0.3 * torch.randn(parameter.shape, generator=generator, dtype=parameter.dtype))
    save_potential(potential, tmp_path / "model.safetensors")
    loaded = load_potential(tmp_path / "model.safetensors").eval()
    assert [(u.fidelity, u.rank) for u in loaded.fidelity_low_rank] == [(1, 2)]
    assert_same_model(potential, loaded, ("PBE", "SCAN"))


def _set(config: dict, key: str, value):
    """Edit a (nested) model config entry in place: key "config.gate" etc."""
    *parents, last = key.split(".")
    for parent in parents:
        config = config[parent]
    config[last] = value


@pytest.mark.parametrize("saved", ["mace"], indirect=True)
@pytest.mark.parametrize(
    "key, value, message",
    [
        ("config.interaction_cls", {"class": "os.system"}, r"config.interaction_cls: class 'os.system' is not from mace.modules"),
        ("config.readout_cls", {"class": "mace.modules.blocks.NoSuchBlock"}, r"config.readout_cls: mace has no class"),
        ("config.readout_cls", {"class": "mace.modules.torch"}, r"readout_cls: 'mace.modules.torch' is not a mace module class"),
        ("config.readout_cls", {"class": "mace.modules.utils.compute_forces"}, r"'mace.modules.utils.compute_forces' is not a mace"),
        ("config.gate", {"function": "torch.load"}, r"config.gate: function 'torch.load' is not one of"),
        ("config.gate", {"function": "builtins.eval"}, r"config.gate: function 'builtins.eval' is not one of"),
        ("config.gate", {"code": "print"}, r"config.gate: unknown tag 'code'"),
        ("model", "MACELES", r"backbone_config.model 'MACELES' is not one of \['MACE', 'ScaleShiftMACE'\]"),
    ],
)  # fmt: skip
def test_edited_mace_names_are_refused(saved, key, value, message, tmp_path):
    _, path = saved
    edited = tmp_path / "edited.safetensors"
    _rewrite(path, edited, lambda meta: _set(meta["backbone_config"], key, value))  # a consistent hand-made file
    with pytest.raises(ValueError, match=message):
        load_potential(edited)


@pytest.mark.parametrize("saved", ["nequip"], indirect=True)
def test_edited_nequip_builder_is_refused(saved, tmp_path):
    _, path = saved
    _rewrite(path, tmp_path / "edited.safetensors", lambda meta: _set(meta["backbone_config"], "model", "ModelFromCheckpoint"))
    with pytest.raises(ValueError, match=r"edited.safetensors: backbone_config.model 'ModelFromCheckpoint' is not one of"):
        load_potential(tmp_path / "edited.safetensors")


@pytest.mark.parametrize("saved", ["mace", "nequip"], indirect=True)
def test_another_library_version_warns_and_loads(saved, tmp_path):
    potential, path = saved
    lib = read_metadata(path)["backbone_config"]["library"]
    _rewrite(path, tmp_path / "old.safetensors", lambda meta: _set(meta["backbone_config"], "version", "0.0.1"))
    installed = version(PIP_NAME[lib]).replace(".", r"\.")
    with pytest.warns(UserWarning, match=rf"saved with {PIP_NAME[lib]} 0\.0\.1, and {installed} is installed"):
        loaded = load_potential(tmp_path / "old.safetensors")
    assert all(torch.equal(v, loaded.state_dict()[k]) for k, v in potential.state_dict().items())


@pytest.mark.parametrize("saved", ["mace", "nequip"], indirect=True)
def test_missing_library_is_named_with_its_extra(saved, monkeypatch):
    _, path = saved
    lib = read_metadata(path)["backbone_config"]["library"]
    monkeypatch.setitem(sys.modules, lib, None)  # `import mace` / `import nequip` now fails
    with pytest.raises(ImportError, match=rf"is a {PIP_NAME[lib]} model.*pip install 'fidelity-adapters\[{lib}\]'"):
        load_potential(path)


@pytest.mark.parametrize("saved", ["mace", "nequip"], indirect=True)
def test_sizes_deep_in_the_config_are_checked(saved):
    """check_metadata applies the size and cutoff limits inside nested third-party configs
    (mace's irreps strings included); a nequip seed is not a size."""
    _, path = saved
    meta = read_metadata(path)
    lib = meta["backbone_config"]["library"]
    edits = [("config.r_max", 1e6, r"backbone_config.config.r_max 1000000.0 A is outside"),
             ("options.elements", [1, 10**6], r"backbone_config.options.elements = 1000000 is outside \[0, 4096\]"),
             ("library", "sevenn", r"backbone_config.library is 'sevenn', not '" + lib + "'"),
             ("config", None, r"backbone_config.config is missing or not a dict")]  # fmt: skip
    if lib == "mace":
        edits.append(("config.hidden_irreps", {"irreps": "100000x0e"}, r"config.hidden_irreps.irreps '100000x0e' has a multiplicity"))
    else:
        edits.append(("config.num_layers", 10**6, r"backbone_config.config.num_layers = 1000000 is outside"))
    for key, value, message in edits:
        edited = read_metadata(path)
        _set(edited["backbone_config"], key, value)
        with pytest.raises(ValueError, match=message):
            check_metadata(edited, "m.safetensors")
    if lib == "nequip":
        _set(meta["backbone_config"], "config.seed", 2**40)
        check_metadata(meta, "m.safetensors")


def test_nequip_model_without_a_recipe_is_refused(tmp_path):
    require("nequip")
    from nequip.model import NequIPGNNModel

    from fidelity_adapters.third_party import build_nequip, nequip_global_state

    with nequip_global_state():
        model = NequIPGNNModel(seed=0, model_dtype="float64", type_names=["H", "O"], r_max=4.0, num_layers=1, num_features=4,
                               avg_num_neighbors=4.0)
    with torch.random.fork_rng(devices=[]):
        potential = wrap_third_party(model, ["PBE", "SCAN"])
    with pytest.raises(ValueError, match=r"cannot be saved: build it with fidelity_adapters.third_party.build_nequip\("):
        save_potential(potential, tmp_path / "m.safetensors")
    assert not (tmp_path / "m.safetensors").exists()
    with pytest.raises(ValueError, match="cannot be saved"):  # before the first epoch, not after it
        train(potential, [], [], TrainConfig(max_epochs=1), out_dir=tmp_path / "run")
    with pytest.raises(ValueError, match=r"pair_potential=Identity\(\) is not plain JSON"):
        build_nequip("NequIPGNNModel", seed=0, model_dtype="float64", type_names=["H"], r_max=4.0, pair_potential=torch.nn.Identity())
    with pytest.raises(ValueError, match=r"unknown nequip builder 'ModelFromCheckpoint'"):
        build_nequip("ModelFromCheckpoint", checkpoint_path="model.ckpt")


def test_sevenn_file_records_its_version(tmp_path):
    """A SevenNet potential is saved as its load_sevenn recipe, now with sevenn's version:
    another version warns; a file from before versions were recorded loads silently."""
    pytest.importorskip("sevenn")
    from fidelity_adapters.third_party import load_sevenn

    path = tmp_path / "m.safetensors"
    save_potential(load_sevenn("7net-0"), path)
    config = read_metadata(path)["backbone_config"]
    assert (config["library"], config["version"]) == ("sevenn", version("sevenn"))
    _rewrite(path, tmp_path / "other.safetensors", lambda meta: _set(meta["backbone_config"], "version", "0.0.1"))
    with pytest.warns(UserWarning, match=r"saved with sevenn 0\.0\.1"):
        load_potential(tmp_path / "other.safetensors")
    _rewrite(path, tmp_path / "older.safetensors", lambda meta: meta.update(backbone_config={"sevenn": config["sevenn"]}))
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        warnings.filterwarnings("ignore", "No tensor product accelerator")  # sevenn's own, on CPU
        assert load_potential(tmp_path / "older.safetensors").fidelities == ["PBE"]
