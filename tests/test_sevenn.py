"""SevenNet's pretrained checkpoints (fidelity_adapters.third_party.sevenn) against sevenn's
own ASE calculator: energy, forces and stress of a molecule, a periodic crystal and a triclinic
cell, for every model and every 7net-mf-0 modality; forces as minus the energy gradient; the
fidelity names and modalities; a new fidelity starting as a copy of a base one.

Two precisions. float64: sevenn's model and calculator run in float32 only (their one-hot
embeddings and input tensors are float32 whatever the model's dtype), so the reference is
sevenn's calculator with its model in float64, the one-hot outputs cast to float64 and its
input tensors made float64 (`sevenn_reference`): the same code, more digits. float32: the
unmodified calculator against our float32 potential, to the float32 rounding of two ways of
computing the edge vectors. Needs sevenn (pip install -e '.[sevenn]'; docs/third_party.md)."""

import functools
from contextlib import contextmanager

import numpy as np
import pytest
import torch
from ase import Atoms
from ase.build import bulk, molecule

try:
    import sevenn.util
    from sevenn.calculator import SevenNetCalculator
    from sevenn.nn.node_embedding import OnehotEmbedding
except ImportError as error:
    reason = f"sevenn is not importable ({error}): pip install -e '.[sevenn]' (docs/third_party.md)"
    pytest.skip(reason, allow_module_level=True)

from fidelity_adapters import wrap  # noqa: E402
from fidelity_adapters.calculator import FidelityCalculator  # noqa: E402
from fidelity_adapters.fidelity_state import UnknownFidelityError  # noqa: E402
from fidelity_adapters.potential import exact_float64_constants  # noqa: E402
from fidelity_adapters.third_party.sevenn import add_fidelity, load_sevenn  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore:No tensor product accelerator:UserWarning")  # sevenn's, on CPU

# (model, our fidelity, sevenn modality)
CASES = [("7net-0", "PBE", None), ("7net-l3i5", "PBE", None), ("7net-mf-0", "r2SCAN", "R2SCAN"), ("7net-mf-0", "PBE", "PBE")]
CASE_IDS = [f"{name}-{fidelity}" for name, fidelity, _ in CASES]


def methane() -> Atoms:
    atoms = molecule("CH4")
    atoms.positions += np.random.default_rng(0).normal(scale=0.05, size=atoms.positions.shape)
    atoms.cell = [20.0, 20.0, 20.0]  # a big box, not periodic
    atoms.center()
    atoms.pbc = False
    return atoms


def silicon() -> Atoms:
    atoms = bulk("Si", "diamond", a=5.43)
    atoms.positions += np.random.default_rng(1).normal(scale=0.05, size=atoms.positions.shape)
    return atoms


def triclinic_oxide() -> Atoms:
    """Rocksalt MgO, 4 atoms, the cell sheared to triclinic and the atoms rattled."""
    atoms = bulk("MgO", "rocksalt", a=4.21, cubic=True)[:4]
    shear = np.array([[1.0, 0.08, -0.05], [0.03, 0.97, 0.11], [0.06, -0.04, 1.02]])
    atoms.set_cell(atoms.cell.array @ shear, scale_atoms=True)
    atoms.positions += np.random.default_rng(2).normal(scale=0.06, size=atoms.positions.shape)
    return atoms


STRUCTURES = {"CH4": methane, "Si": silicon, "MgO-triclinic": triclinic_oxide}


@functools.cache
def ours(name: str, dtype: torch.dtype):
    """load_sevenn(name) in dtype (cached: the tests that use it do not change it)."""
    return load_sevenn(name).to(dtype)


def _float64_onehots(module, args, out):
    for key in (module.key_output, module.key_additional_output):
        if key is not None:
            out[key] = out[key].double()
    return out


@functools.cache
def sevenn_model_float64(name: str):
    """sevenn's model in float64, with exact Wigner 3j coefficients as our potentials get them
    (a .double() alone keeps them rounded to float32: 3e-10 relative in these forces)."""
    model = sevenn.util.load_checkpoint(name).build_model().double()
    exact_float64_constants(model)
    for module in model.modules():
        if isinstance(module, OnehotEmbedding):
            module.register_forward_hook(_float64_onehots)
    return model


@contextmanager
def float64_inputs():
    """sevenn's calculator turns its numpy graph into float32 tensors (util.dtype_correct);
    inside this block, into float64 ones."""
    original = sevenn.util.dtype_correct
    sevenn.util.dtype_correct = functools.partial(original, float_dtype=torch.float64)
    try:
        yield
    finally:
        sevenn.util.dtype_correct = original


def evaluate(calculator, atoms: Atoms) -> dict:
    atoms = atoms.copy()
    atoms.calc = calculator
    out = {"energy": atoms.get_potential_energy(), "forces": atoms.get_forces()}
    if atoms.pbc.all():
        out["stress"] = atoms.get_stress()
    return out


@functools.cache
def sevenn_calculator(name: str, modal: str | None):
    return SevenNetCalculator(name, device="cpu", modal=modal)


def sevenn_reference(name: str, modal: str | None, atoms: Atoms, dtype: torch.dtype) -> dict:
    """sevenn's own calculator: its neighbour list, its model, its forces and stress."""
    if dtype == torch.float32:
        calculator = sevenn_calculator(name, modal)
        calculator.reset()
        return evaluate(calculator, atoms)
    calculator = SevenNetCalculator(sevenn_model_float64(name), file_type="model_instance", device="cpu", modal=modal)
    with float64_inputs():
        return evaluate(calculator, atoms)


def relative_differences(out: dict, reference: dict) -> dict:
    """|dE| / |E|, and max |difference| / max |reference| for forces and stress."""
    diffs = {"energy": abs(out["energy"] - reference["energy"]) / abs(reference["energy"])}
    for key in ("forces", "stress"):
        if key in reference:
            diffs[key] = float(np.abs(out[key] - reference[key]).max() / np.abs(reference[key]).max())
    return diffs


def compare(name, fidelity, modal, structure, dtype) -> dict:
    atoms = STRUCTURES[structure]()
    reference = sevenn_reference(name, modal, atoms, dtype)
    out = evaluate(FidelityCalculator(ours(name, dtype), fidelity=fidelity), atoms)
    assert set(out) == set(reference)  # stress exactly for the periodic cells
    return relative_differences(out, reference)


@pytest.mark.parametrize("structure", STRUCTURES)
@pytest.mark.parametrize("name, fidelity, modal", CASES, ids=CASE_IDS)
def test_equals_sevenn_calculator_float64(name, fidelity, modal, structure):
    diffs = compare(name, fidelity, modal, structure, torch.float64)
    assert max(diffs.values()) < 1e-10, diffs  # measured <= 1e-14 (docs/third_party.md)


@pytest.mark.parametrize("structure", STRUCTURES)
@pytest.mark.parametrize("name, fidelity, modal", CASES, ids=CASE_IDS)
def test_equals_sevenn_calculator_float32(name, fidelity, modal, structure):
    """The unmodified calculator (float32): the edge vectors are rounded differently (sevenn
    rounds its float64 neighbour-list vectors, we subtract float32 positions)."""
    diffs = compare(name, fidelity, modal, structure, torch.float32)
    assert max(diffs.values()) < 2e-5, diffs  # measured <= 7.2e-6 (docs/third_party.md)


def test_forces_and_stress_are_energy_derivatives():
    potential, fidelity = ours("7net-mf-0", torch.float64), "r2SCAN"
    atoms = triclinic_oxide()[:2]

    def energy(a):
        return float(potential(potential.graph(a, fidelity), forces=False)["energy"][0].detach())

    out = potential(potential.graph(atoms, fidelity), forces=True, stress=True)
    h, numeric = 1e-4, np.zeros((len(atoms), 3))
    for i in range(len(atoms)):
        for k in range(3):
            moved = [atoms.copy(), atoms.copy()]
            moved[0].positions[i, k] += h
            moved[1].positions[i, k] -= h
            numeric[i, k] = -(energy(moved[0]) - energy(moved[1])) / (2 * h)
    np.testing.assert_allclose(out["forces"].detach().numpy(), numeric, rtol=0, atol=1e-6)
    assert np.abs(numeric).max() > 0.1
    strain_derivative = np.zeros((3, 3))
    for i in range(3):
        for k in range(3):
            strained = []
            for sign in (1, -1):
                deformation = np.eye(3)
                deformation[i, k] += sign * h
                a = atoms.copy()
                a.set_cell(a.cell.array @ deformation, scale_atoms=True)
                strained.append(energy(a))
            strain_derivative[i, k] = (strained[0] - strained[1]) / (2 * h) / atoms.get_volume()
    np.testing.assert_allclose(out["stress"][0].detach().numpy(), strain_derivative, rtol=0, atol=1e-7)


def test_fidelity_names_and_modalities_are_checked():
    potential = ours("7net-mf-0", torch.float32)
    assert potential.fidelities == ["r2SCAN", "PBE"] and potential.backbone.modals == ["R2SCAN", "PBE"]
    assert potential.backbone.cutoff == 5.0 and potential.injector is None
    with pytest.raises(UnknownFidelityError, match="unknown fidelity 'SCAN'.*'r2SCAN', 'PBE'"):
        FidelityCalculator(potential, fidelity="SCAN")
    with pytest.raises(UnknownFidelityError, match="unknown fidelity"):
        potential.predict([silicon()], fidelity="R2SCAN")  # sevenn's name is not ours
    with pytest.raises(ValueError, match=r"unknown sevenn modality.*'SCAN'.*\['R2SCAN', 'PBE'\]"):
        load_sevenn("7net-mf-0", ["PBE", "SCAN"], modal_map={"SCAN": "SCAN"})
    with pytest.raises(ValueError, match=r"no modality for fidelities \['wB97X'\]"):
        load_sevenn("7net-mf-0", ["PBE", "wB97X"])
    with pytest.raises(ValueError, match="7net-0 has no modalities"):
        load_sevenn("7net-0", modal_map={"PBE": "PBE"})
    with pytest.raises(ValueError, match="unknown SevenNet model"):
        load_sevenn("7net-omat")
    with pytest.raises(TypeError, match="sevenn model needs its adapter"):
        wrap(potential.backbone.model, ["PBE"], potential.elements)


def test_new_fidelity_starts_as_its_base():
    potential = load_sevenn("7net-mf-0").double()
    atoms = triclinic_oxide()
    before = {f: evaluate(FidelityCalculator(potential, f), atoms) for f in potential.fidelities}
    assert add_fidelity(potential, "SCAN", like="r2SCAN") is potential
    assert potential.fidelities == ["r2SCAN", "PBE", "SCAN"] and potential.backbone.n_heads == 3
    after = {f: evaluate(FidelityCalculator(potential, f), atoms) for f in potential.fidelities}
    for key in ("energy", "forces", "stress"):
        np.testing.assert_array_equal(after["SCAN"][key], after["r2SCAN"][key])  # the same columns, bit for bit
        for f in ("r2SCAN", "PBE"):  # the old fidelities keep their predictions (rescaled weights: rounding only)
            np.testing.assert_allclose(after[f][key], before[f][key], rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(potential.fidelity_state.elemental_energies[2], potential.fidelity_state.elemental_energies[0])

    # its own columns: an energy + force loss at SCAN (double backward) moves SCAN's modality rows,
    # not r2SCAN's or PBE's (in the readout layer they are a per-atom constant: energy only)
    out = potential(potential.graph(atoms, "SCAN"), forces=True, training=True)
    linears = [m.linear for m in potential.backbone.model if getattr(m, "num_modalities", 0) > 1]
    assert len(linears) == 11  # self-interactions 1 and 2 of five blocks, the first readout layer
    grads = torch.autograd.grad(out["energy"].sum() + out["forces"].pow(2).sum(), [m.weight for m in linears])
    for linear, grad in zip(linears, grads):
        last = len(linear.irreps_in) - 1  # the modality one-hots
        *_, modal_rows = (g for _, ins, g in linear.weight_views(grad, yield_instruction=True) if ins.i_in == last)
        rows = modal_rows[-3:].abs().sum(1)
        assert rows[2] > 0 and rows[0] == 0 and rows[1] == 0


def assert_rotation_invariant(potential, fidelity, atoms, expected, euler):
    """The energy at `fidelity` of the rotated cell equals `expected`'s, its forces are the rotated ones."""
    from scipy.spatial.transform import Rotation

    rotation = Rotation.from_euler("xyz", euler)
    turned = atoms.copy()
    turned.positions, turned.cell = rotation.apply(atoms.positions), rotation.apply(np.asarray(atoms.cell))
    moved = evaluate(FidelityCalculator(potential, fidelity), turned)
    assert moved["energy"] == pytest.approx(expected["energy"], rel=1e-12, abs=1e-10)
    np.testing.assert_allclose(moved["forces"], rotation.apply(expected["forces"]), rtol=0, atol=1e-10)


def test_low_rank_update_moves_its_fidelity_only():
    """add_low_rank_update: the target starts as its base; with the update trained (here: set
    at random) the target's energy, forces and stress change and stay rotation invariant /
    equivariant, every other fidelity keeps its predictions bit for bit, a force loss reaches
    the update's parameters only, and a fidelity added afterwards leaves the update in place."""
    from fidelity_adapters.third_party.sevenn import add_low_rank_update

    potential = add_fidelity(load_sevenn("7net-mf-0").double(), "SCAN", like="r2SCAN")
    atoms = triclinic_oxide()
    before = {f: evaluate(FidelityCalculator(potential, f), atoms) for f in potential.fidelities}
    update = add_low_rank_update(potential, "SCAN", rank=4)
    assert len(update.updates) == 18  # the species embedding, 11 modal layers, the energy layer, 5 skip paths
    assert len(update.radial_updates) == 0  # radial networks only when asked
    with pytest.raises(ValueError, match="has a low-rank update already"):
        add_low_rank_update(potential, "SCAN", rank=4)
    for key, value in evaluate(FidelityCalculator(potential, "SCAN"), atoms).items():
        np.testing.assert_array_equal(value, before["SCAN"][key])  # B = 0, bias 0: no change yet
    with torch.no_grad():
        for parameter in update.parameters():
            parameter.add_(0.05 * torch.randn_like(parameter))
    add_fidelity(potential, "CCSD(T)", like="PBE")  # rebuilds the modal layers: the hooks move with them
    after = {f: evaluate(FidelityCalculator(potential, f), atoms) for f in potential.fidelities}
    for f in ("r2SCAN", "PBE"):
        for key in ("energy", "forces", "stress"):
            np.testing.assert_allclose(after[f][key], before[f][key], rtol=1e-12, atol=1e-12)
    assert abs(after["SCAN"]["energy"] - before["SCAN"]["energy"]) > 1e-3
    assert np.abs(after["SCAN"]["forces"] - before["SCAN"]["forces"]).max() > 1e-4

    assert_rotation_invariant(potential, "SCAN", atoms, after["SCAN"], [0.4, -1.2, 2.0])

    potential.backbone.requires_grad_(False)
    update.requires_grad_(True)
    out = potential(potential.graph(atoms, "SCAN"), forces=True, training=True)
    loss = out["energy"].sum() + out["forces"].pow(2).sum()  # double backward through the hooks
    grads = torch.autograd.grad(loss, list(update.parameters()))
    assert all(g.abs().sum() > 0 for g in grads)
    layer = potential.backbone.model.onehot_to_feature_x.linear
    with pytest.raises(RuntimeError, match="no atom fidelities set"):  # a layer called outside its Potential
        layer(torch.zeros(2, layer.irreps_in.dim, dtype=torch.float64))


@pytest.mark.parametrize("part", ["radial", "skip-paths"])
def test_an_optional_part_of_the_update_moves_its_fidelity_only(part):
    """radial=True: the last layer of each of the five convolutions' radial networks gets an
    update (on the fidelity's edges); self_connections=True: the linear of each of the five skip
    paths (SelfConnectionLinearIntro, no modality inputs). Moved on its own (the other updates
    left at zero), either part changes the target's energy and forces, keeps them rotation
    invariant / equivariant, leaves every other fidelity bit for bit, and a force loss reaches
    it (double backward)."""
    from fidelity_adapters.third_party.sevenn import add_low_rank_update

    potential = add_fidelity(load_sevenn("7net-mf-0").double(), "SCAN", like="r2SCAN")
    atoms = triclinic_oxide()
    before = {f: evaluate(FidelityCalculator(potential, f), atoms) for f in potential.fidelities}
    radial = part == "radial"
    update = add_low_rank_update(potential, "SCAN", rank=4, radial=radial, self_connections=not radial)
    moved = update.radial_updates if radial else update.updates[13:]  # after the embedding's, modal and energy layers'
    assert len(moved) == 5 and len(update.updates) == (13 if radial else 18)
    for key, value in evaluate(FidelityCalculator(potential, "SCAN"), atoms).items():
        np.testing.assert_array_equal(value, before["SCAN"][key])  # B = 0, bias 0: no change yet
    with torch.no_grad():
        for parameter in moved.parameters():
            parameter.add_(0.05 * torch.randn_like(parameter))
    after = {f: evaluate(FidelityCalculator(potential, f), atoms) for f in potential.fidelities}
    for f in ("r2SCAN", "PBE"):
        for key in ("energy", "forces", "stress"):
            np.testing.assert_array_equal(after[f][key], before[f][key])
    assert abs(after["SCAN"]["energy"] - before["SCAN"]["energy"]) > 1e-4
    assert np.abs(after["SCAN"]["forces"] - before["SCAN"]["forces"]).max() > 1e-4

    assert_rotation_invariant(potential, "SCAN", atoms, after["SCAN"], [-0.7, 0.3, 1.1])

    potential.requires_grad_(False)
    moved.requires_grad_(True)
    out = potential(potential.graph(atoms, "SCAN"), forces=True, training=True)
    grads = torch.autograd.grad(out["forces"].pow(2).sum(), list(moved.parameters()))
    assert all(g.abs().sum() > 0 for g in grads)


def test_new_name_on_an_existing_modality():
    potential = load_sevenn("7net-mf-0", ["r2SCAN", "PBE", "SCAN"], modal_map={"SCAN": "R2SCAN"}).double()
    assert potential.backbone.modals == ["R2SCAN", "PBE", "R2SCAN"]
    a, b = (evaluate(FidelityCalculator(potential, f), silicon()) for f in ("r2SCAN", "SCAN"))
    for key in a:
        np.testing.assert_array_equal(a[key], b[key])


def test_a_model_without_modalities_takes_a_film():
    potential = load_sevenn("7net-0", ["PBE", "SCAN"], inject=("embedding", "messages", "readout"), inject_dim=4)
    assert potential.injector is not None and len(potential.injector.films["messages"]) == 5
    with pytest.raises(ValueError, match="add_fidelity needs a potential over a multi-modal sevenn model"):
        add_fidelity(potential, "r2SCAN", like="PBE")


def test_wrap_third_party_takes_a_raw_sevenn_model():
    from fidelity_adapters.third_party import wrap_third_party

    raw = sevenn.util.load_checkpoint("7net-0").build_model()
    potential = wrap_third_party(raw, ["PBE"]).double()
    reference = ours("7net-0", torch.float64)
    atoms = triclinic_oxide()
    got, want = evaluate(FidelityCalculator(potential, "PBE"), atoms), evaluate(FidelityCalculator(reference, "PBE"), atoms)
    for key in want:
        np.testing.assert_allclose(got[key], want[key], rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("how", ["added-modality", "low-rank", "low-rank-radial-skip", "film"])
def test_saved_sevenn_potential_reloads_bit_for_bit(how, tmp_path):
    """Saved as the recipe that rebuilds it (checkpoint, fidelities, modalities, added
    fidelities, FiLM) plus every tensor: trained weights and references come back bit for bit;
    the LAMMPS / export / finetune commands that take a model file can then take it."""
    from fidelity_adapters.serialization import load_potential, save_potential

    from fidelity_adapters.third_party.sevenn import add_low_rank_update

    if how != "film":
        potential = add_fidelity(load_sevenn("7net-mf-0"), "SCAN", like="r2SCAN")
        if how.startswith("low-rank"):
            full = how.endswith("radial-skip")
            add_low_rank_update(potential, "SCAN", rank=3, radial=full, self_connections=full)
    else:
        potential = load_sevenn("7net-0", ["PBE", "SCAN"], inject=("messages",), inject_dim=4)
    with torch.no_grad():  # as if fine-tuned: every weight moved, so defaults cannot pass for the saved ones
        for parameter in potential.parameters():
            parameter.add_(1e-3 * torch.randn_like(parameter))
        potential.fidelity_state.elemental_energies[-1] += 0.5
    save_potential(potential, tmp_path / "m.safetensors")
    reloaded = load_potential(tmp_path / "m.safetensors")
    assert reloaded.fidelities == potential.fidelities
    saved, loaded = potential.state_dict(), reloaded.state_dict()
    assert saved.keys() == loaded.keys() and all(torch.equal(saved[k], loaded[k]) for k in saved)  # bit for bit
    atoms = triclinic_oxide()
    for fidelity in potential.fidelities:  # the same predictions (float32, summed in any thread order)
        got, want = evaluate(FidelityCalculator(reloaded, fidelity), atoms), evaluate(FidelityCalculator(potential, fidelity), atoms)
        for key in want:
            np.testing.assert_allclose(got[key], want[key], rtol=1e-5, atol=1e-5)


def test_a_recipe_saved_before_radial_or_skip_updates_rebuilds_without_them():
    """Files saved before radial updates existed list an update as [fidelity, rank], and before
    self-connection updates as [fidelity, rank, radial]."""
    import copy

    from fidelity_adapters.third_party.sevenn import add_low_rank_update, rebuild_sevenn

    potential = add_fidelity(load_sevenn("7net-mf-0"), "SCAN", like="r2SCAN")
    add_low_rank_update(potential, "SCAN", rank=3, radial=True, self_connections=True)
    recipe = copy.deepcopy(potential.backbone.recipe)
    assert recipe["updates"] == [["SCAN", 3, True, True]]
    (update,) = rebuild_sevenn(recipe).backbone.fidelity_updates
    assert len(update.radial_updates) == 5 and len(update.updates) == 18
    recipe["updates"] = [["SCAN", 3, True]]
    (update,) = rebuild_sevenn(recipe).backbone.fidelity_updates
    assert len(update.radial_updates) == 5 and len(update.updates) == 13
    recipe["updates"] = [["SCAN", 3]]
    (update,) = rebuild_sevenn(recipe).backbone.fidelity_updates
    assert update.rank == 3 and len(update.radial_updates) == 0 and len(update.updates) == 13
