"""One conformance suite for every backbone (issue 15): each check below runs, with the same
code, over every backbone in conftest.BACKBONES, at the tolerances of the backbone's precision
(conftest.FLOAT64 / FLOAT32).

Checks: forces and stress against central finite differences of the energy; proper and
improper rotations; translations (and periodic wrapping); permutations; supercells; cells
smaller than the cutoff; an isolated atom (and isolated atoms that are far apart); batches; the
fidelity reaching the output; a save/load round trip; float32 and float64.

Structures are tiny (a water dimer, a 2-atom and a 1-atom Si cell, single atoms) so the whole
suite stays fast for the pretrained models too. Every check compares at the second fidelity
(or both): the one the fidelity vector has to change.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from ase import Atoms
from ase.build import bulk, molecule
from scipy.spatial.transform import Rotation
from torch_geometric.data import Batch

from fidelity_adapters import FidelityCalculator, load_potential, save_potential

pytestmark = [
    pytest.mark.filterwarnings("ignore:No tensor product accelerator:UserWarning"),  # sevenn's, on CPU
]


# --- structures ---------------------------------------------------------------------------

def water_dimer() -> Atoms:
    """Two rattled water molecules 2.9 A apart, not periodic."""
    a, b = molecule("H2O"), molecule("H2O")
    b.rotate(70, "x")
    b.positions += [2.9, 0.2, 0.1]
    atoms = a + b
    atoms.positions += np.random.default_rng(0).normal(scale=0.03, size=atoms.positions.shape)
    return atoms


def periodic_water() -> Atoms:
    """The dimer in a triclinic cell smaller than twice every cutoff (atoms see images)."""
    atoms = water_dimer()
    atoms.cell = [[7.0, 0.0, 0.0], [1.0, 6.5, 0.0], [0.5, 0.8, 6.8]]
    atoms.pbc = True
    return atoms


def silicon_pair() -> Atoms:
    """Diamond Si, 2-atom primitive cell (edges ~3.9 A, below every cutoff), sheared and rattled."""
    atoms = bulk("Si", "diamond", a=5.43)
    atoms.set_cell(atoms.cell.array @ [[1.0, 0.03, -0.02], [0.01, 0.98, 0.04], [-0.03, 0.02, 1.01]], scale_atoms=True)
    atoms.positions += np.random.default_rng(1).normal(scale=0.06, size=atoms.positions.shape)
    return atoms


def silicon_single() -> Atoms:
    """One Si atom in a triclinic cell with edges of 2.5-2.7 A: every neighbour is an image of itself."""
    return Atoms("Si", positions=[[0.3, 0.2, 0.1]], cell=[[2.5, 0, 0], [0.6, 2.45, 0], [0.3, 0.5, 2.6]], pbc=True)


def isolated(symbols: str = "O", periodic: bool = False) -> Atoms:
    """Atoms 8 A apart (further than every cutoff), alone, or in a 24 A periodic box."""
    atoms = Atoms(symbols, cell=np.diag([24.0, 24.0, 24.0]), pbc=periodic)
    atoms.positions = [[8.0 * k + 4.0, 4.0 + 0.3 * k, 4.0] for k in range(len(atoms))]
    return atoms


# --- evaluation -----------------------------------------------------------------------------

def evaluate(potential, atoms: Atoms, fidelity: str, stress: bool | None = None) -> dict:
    """Energy (float), forces (N, 3) and, for periodic cells, stress (3, 3), as float64 numpy."""
    stress = bool(atoms.pbc.all()) if stress is None else stress
    out = potential(potential.graph(atoms, fidelity), forces=True, stress=stress)
    result = {"energy": float(out["energy"][0].detach()), "forces": out["forces"].detach().double().numpy()}
    if stress:
        result["stress"] = out["stress"][0].detach().double().numpy()
    return result


def energy(potential, atoms: Atoms, fidelity: str) -> float:
    with torch.no_grad():
        return float(potential(potential.graph(atoms, fidelity), forces=False)["energy"][0])


def derivative(function, h: float) -> float:
    """d function / dx at 0, five-point central difference (error O(h^4))."""
    return (8 * (function(h) - function(-h)) - (function(2 * h) - function(-2 * h))) / (12 * h)


def moved(atoms: Atoms, i: int, k: int, d: float) -> Atoms:
    out = atoms.copy()
    out.positions[i, k] += d
    return out


def assert_same(got: dict, want: dict, tol, n_atoms: int, what: str) -> None:
    """Energies to tol.energy per atom, forces and stress (where both have them) per component."""
    assert got["energy"] == pytest.approx(want["energy"], rel=0, abs=tol.energy * n_atoms), f"{what}: energy"
    np.testing.assert_allclose(got["forces"], want["forces"], rtol=0, atol=tol.forces, err_msg=f"{what}: forces")
    if "stress" in got and "stress" in want:
        np.testing.assert_allclose(got["stress"], want["stress"], rtol=0, atol=tol.stress, err_msg=f"{what}: stress")


def transformed(atoms: Atoms, matrix: np.ndarray, shift=(0.0, 0.0, 0.0)) -> Atoms:
    """Positions (and cell) mapped by x -> matrix x (+ shift for the positions)."""
    out = atoms.copy()
    out.positions = atoms.positions @ matrix.T + shift
    out.cell = atoms.cell.array @ matrix.T
    return out


def strained(atoms: Atoms, a: int, b: int, h: float) -> Atoms:
    """Cell and positions deformed by (1 + h e_ab) on the right, the convention of Potential's strain."""
    deformation = np.eye(3)
    deformation[a, b] += h
    out = atoms.copy()
    out.set_cell(atoms.cell.array @ deformation, scale_atoms=False)
    out.positions = atoms.positions @ deformation
    return out


@pytest.fixture(autouse=True)
def _limitations(request):
    """A check the backbone's spec names among its limitations runs as a strict xfail."""
    if "backbone" not in request.fixturenames:
        return
    params = {k: v for k, v in request.node.callspec.params.items() if k != "backbone"}
    check = request.node.originalname.removeprefix("test_") + (f"[{','.join(map(str, params.values()))}]" if params else "")
    reason = request.getfixturevalue("backbone").spec.limitations.get(check)
    if reason is not None:
        request.applymarker(pytest.mark.xfail(reason=reason, strict=True))


# --- the checks -----------------------------------------------------------------------------

def test_forces_are_minus_the_energy_gradient(backbone):
    potential, tol, fidelity = backbone.potential, backbone.tol, backbone.fidelities[1]
    h = tol.fd_step
    for atoms, components in [
        (water_dimer(), [(i, i % 3) for i in range(6)]),  # a molecule: one component of every atom
        (silicon_pair(), [(0, 0), (1, 1), (0, 2)]),  # a cell smaller than the cutoff
    ]:
        forces = evaluate(potential, atoms, fidelity)["forces"]
        analytic = np.array([forces[i, k] for i, k in components])
        numeric = np.array([-derivative(lambda d: energy(potential, moved(atoms, i, k, d), fidelity), h) for i, k in components])
        scale = np.abs(numeric).max()
        assert scale > 1e-3, f"forces of {atoms.get_chemical_formula()} too small to test: {scale}"
        error = np.abs(analytic - numeric).max() / scale
        where = atoms.get_chemical_formula()
        assert error < tol.fd, f"{where}: relative force error {error:.2e} (analytic {analytic}, numeric {numeric})"


def test_stress_is_the_strain_derivative(backbone):
    potential, tol, fidelity = backbone.potential, backbone.tol, backbone.fidelities[1]
    atoms, h = silicon_pair(), tol.fd_step
    stress = evaluate(potential, atoms, fidelity)["stress"]
    numeric = np.zeros((3, 3))
    for a in range(3):
        for b in range(3):  # all nine: the strain gradient is not assumed symmetric
            numeric[a, b] = derivative(lambda d: energy(potential, strained(atoms, a, b, d), fidelity), h) / atoms.get_volume()
    scale = np.abs(numeric).max()
    assert scale > 1e-4, f"stress too small to test: {scale}"
    error = np.abs(stress - numeric).max() / scale
    assert error < tol.fd, f"relative stress error {error:.2e}\nanalytic\n{stress}\nnumeric\n{numeric}"
    np.testing.assert_allclose(stress, stress.T, rtol=0, atol=max(tol.stress, tol.fd * scale))  # no net torque


@pytest.mark.parametrize("kind", ["proper", "improper"])
def test_rotations(backbone, kind):
    """x -> R x (proper) and x -> -R x (a rotation times inversion): energy unchanged, forces
    rotated as vectors, stress as a tensor."""
    potential, tol, fidelity = backbone.potential, backbone.tol, backbone.fidelities[1]
    matrix = (1 if kind == "proper" else -1) * Rotation.from_euler("xyz", [0.3, -1.1, 2.0]).as_matrix()
    for atoms in (water_dimer(), periodic_water()):
        base = evaluate(potential, atoms, fidelity)
        turned = evaluate(potential, transformed(atoms, matrix), fidelity)
        expected = {"energy": base["energy"], "forces": base["forces"] @ matrix.T}
        if "stress" in base:
            expected["stress"] = matrix @ base["stress"] @ matrix.T
        assert_same(turned, expected, tol, len(atoms), f"{kind} rotation of {atoms.get_chemical_formula()} pbc={atoms.pbc.all()}")
        assert np.abs(base["forces"]).max() > 100 * tol.forces  # not trivially equivariant


def test_translations(backbone):
    """Any translation, and atoms moved by lattice vectors (outside the cell): nothing changes."""
    potential, tol, fidelity = backbone.potential, backbone.tol, backbone.fidelities[1]
    for atoms in (water_dimer(), periodic_water(), silicon_pair()):
        base = evaluate(potential, atoms, fidelity)
        shifted = transformed(atoms, np.eye(3), shift=[1.3, -2.1, 0.7])
        assert_same(evaluate(potential, shifted, fidelity), base, tol, len(atoms), f"translated {atoms.get_chemical_formula()}")
        if atoms.pbc.all():
            images = atoms.copy()
            images.positions[0] += atoms.cell.array.T @ [1, -2, 1]
            images.positions[-1] -= atoms.cell.array[2]
            what = f"image-shifted {atoms.get_chemical_formula()}"
            assert_same(evaluate(potential, images, fidelity), base, tol, len(atoms), what)


def test_permutations(backbone):
    potential, tol, fidelity = backbone.potential, backbone.tol, backbone.fidelities[1]
    for atoms in (water_dimer(), periodic_water(), silicon_pair()):
        order = np.random.default_rng(5).permutation(len(atoms))
        if (order == np.arange(len(atoms))).all():
            order = order[::-1]
        base = evaluate(potential, atoms, fidelity)
        out = evaluate(potential, atoms[order], fidelity)
        assert_same(out, {**base, "forces": base["forces"][order]}, tol, len(atoms), f"permuted {atoms.get_chemical_formula()}")


def test_supercell(backbone):
    """A periodic water cell and its 2x1x1 supercell, the 2-atom Si cell and its 2x2x2 one:
    the same energy per atom, forces and stress."""
    potential, tol, fidelity = backbone.potential, backbone.tol, backbone.fidelities[1]
    for atoms, repeat in [(periodic_water(), (2, 1, 1)), (silicon_pair(), (2, 2, 2))]:
        small, big = atoms, atoms.repeat(repeat)
        n = int(np.prod(repeat))
        a, b = evaluate(potential, small, fidelity), evaluate(potential, big, fidelity)
        expected = {"energy": n * a["energy"], "forces": np.tile(a["forces"], (n, 1)), "stress": a["stress"]}
        assert_same(b, expected, tol, len(big), f"{repeat} supercell of {small.get_chemical_formula()}")


def test_cell_smaller_than_the_cutoff(backbone):
    """One atom whose neighbours are all images of itself (the cell is smaller than the cutoff
    in every direction): no force (inversion symmetry), the energy per atom and stress of a
    2x2x2 supercell, and stress as the strain derivative."""
    potential, tol, fidelity = backbone.potential, backbone.tol, backbone.fidelities[1]
    atoms = silicon_single()
    cell = atoms.cell.array
    heights = atoms.get_volume() / np.linalg.norm(np.cross(cell[[1, 2, 0]], cell[[2, 0, 1]]), axis=1)
    assert heights.max() < potential.backbone.cutoff
    graph = potential.graph(atoms, fidelity)
    assert graph.edge_index.shape[1] >= 12 and bool((graph.edge_index[0] == graph.edge_index[1]).all())
    out = evaluate(potential, atoms, fidelity)
    np.testing.assert_allclose(out["forces"], 0, rtol=0, atol=tol.forces)
    big = evaluate(potential, atoms.repeat(2), fidelity)
    expected = {"energy": 8 * out["energy"], "forces": np.zeros((8, 3)), "stress": out["stress"]}
    assert_same(big, expected, tol, 8, "2x2x2 supercell of a 1-atom cell")
    h = tol.fd_step
    scale = np.abs(out["stress"]).max()
    assert scale > 1e-4, f"stress too small to test: {scale}"
    for a, b in [(0, 0), (0, 1), (2, 1)]:
        numeric = derivative(lambda d: energy(potential, strained(atoms, a, b, d), fidelity), h) / atoms.get_volume()
        assert abs(out["stress"][a, b] - numeric) < tol.fd * scale, f"stress[{a},{b}] {out['stress'][a, b]} vs numeric {numeric}"


def test_isolated_atoms(backbone):
    """A single atom with no neighbour: a finite energy, no force, no stress, the same with and
    without a (big) periodic box; atoms further apart than the cutoff add their energies."""
    potential, tol = backbone.potential, backbone.tol
    for fidelity in backbone.fidelities:
        alone = {}
        for symbol in ("H", "O", "Si"):
            atoms = isolated(symbol, periodic=False)
            assert potential.graph(atoms, fidelity).edge_index.shape[1] == 0
            atoms.calc = FidelityCalculator(potential, fidelity)  # and through ASE's interface
            alone[symbol] = atoms.get_potential_energy()
            assert np.isfinite(alone[symbol]), f"{symbol} alone at {fidelity}: energy {alone[symbol]}"
            np.testing.assert_array_equal(atoms.get_forces(), np.zeros((1, 3)))
        boxed = isolated("O", periodic=True)
        boxed.calc = FidelityCalculator(potential, fidelity)
        assert boxed.get_potential_energy() == pytest.approx(alone["O"], rel=0, abs=tol.energy)
        np.testing.assert_array_equal(boxed.get_forces(), np.zeros((1, 3)))
        np.testing.assert_array_equal(boxed.get_stress(), np.zeros(6))
        apart = isolated("HOSi", periodic=False)
        out = evaluate(potential, apart, fidelity)
        assert out["energy"] == pytest.approx(sum(alone.values()), rel=0, abs=3 * tol.energy)
        np.testing.assert_array_equal(out["forces"], np.zeros((3, 3)))


def test_batches_equal_single_structures(backbone):
    """Structures of different sizes, periodicity and fidelity in one batch: each gets what it
    gets alone (nothing leaks between the structures of a batch)."""
    potential, tol = backbone.potential, backbone.tol
    first, second = backbone.fidelities
    items = [(periodic_water(), second), (silicon_pair(), first), (silicon_pair(), second), (isolated("O", True), first)]
    batch = Batch.from_data_list([potential.graph(a, f) for a, f in items])
    out = potential(batch, forces=True, stress=True)
    forces = torch.split(out["forces"].detach().double(), batch.natoms.tolist())
    for k, (atoms, fidelity) in enumerate(items):
        got = {"energy": float(out["energy"][k].detach()), "forces": forces[k].numpy()}
        got["stress"] = out["stress"][k].detach().double().numpy()
        what = f"batch item {k} ({atoms.get_chemical_formula()}, {fidelity})"
        assert_same(got, evaluate(potential, atoms, fidelity), tol, len(atoms), what)


def test_fidelity_reaches_the_output(backbone):
    """The two fidelities give different network energies (references excluded) and forces,
    and (for a fidelity vector) the energy's gradient reaches both fidelities' vectors. A
    fidelity added to a pretrained model first predicts exactly what its base does; the check
    then runs after its own parameters have moved (spec.open_fidelity)."""
    potential, tol, spec = backbone.potential, backbone.tol, backbone.spec
    first, second = backbone.fidelities
    atoms = periodic_water()
    if spec.starts_equal:
        a, b = evaluate(potential, atoms, first), evaluate(potential, atoms, second)
        assert a["energy"] == b["energy"]
        np.testing.assert_array_equal(a["forces"], b["forces"])
        np.testing.assert_array_equal(a["stress"], b["stress"])
        potential = backbone.fresh()
        spec.open_fidelity(potential)
    batch = Batch.from_data_list([potential.graph(atoms, f) for f in (first, second)])
    network = potential.network_energy(batch)
    difference = float((network[0] - network[1]).abs().detach())
    assert difference > 100 * tol.energy * len(atoms), f"network energies at {first} and {second} differ by {difference}"
    forces = [evaluate(potential, atoms, f)["forces"] for f in (first, second)]
    assert np.abs(forces[0] - forces[1]).max() > 100 * tol.forces
    embedding = potential.fidelity_state.embedding
    if embedding is None:  # no fidelity vector: the fidelity must pick a head (SevenNet's modalities)
        assert getattr(potential.backbone, "n_heads", 1) == 2
    else:
        (grad,) = torch.autograd.grad(network.sum(), embedding.weight)
        assert bool(grad.abs().sum(1).gt(0).all()), "the energy's gradient does not reach every fidelity vector"


def test_save_load_round_trip(backbone, tmp_path):
    """save_potential / load_potential after every weight and a reference row moved (as after
    fine-tuning, so defaults cannot pass for saved values): the same fidelities, dtype, tensors
    bit for bit, and predictions at both fidelities."""
    spec, tol = backbone.spec, backbone.tol
    potential = backbone.fresh()
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for parameter in potential.parameters():
            noise = torch.randn(parameter.shape, generator=generator, dtype=torch.float64)
            parameter.add_(1e-3 * noise.to(parameter.dtype))
        potential.fidelity_state.elemental_energies[-1] += 0.25
    path = tmp_path / "model.safetensors"
    if spec.saveable is not None:  # refused with a clear error, no file written
        with pytest.raises(ValueError, match="cannot be saved"):
            save_potential(potential, path)
        assert not path.exists()
        pytest.xfail(spec.saveable)
    save_potential(potential, path)
    loaded = load_potential(path).eval()
    assert loaded.fidelities == potential.fidelities and loaded.elements == potential.elements
    assert loaded.dtype == potential.dtype and type(loaded.backbone) is type(potential.backbone)
    saved, reloaded = potential.state_dict(), loaded.state_dict()
    assert saved.keys() == reloaded.keys()
    differing = [k for k in saved if not torch.equal(saved[k], reloaded[k])]
    assert not differing, differing[:5]
    atoms = periodic_water()
    for fidelity in potential.fidelities:  # float32: another model instance may sum in another order
        got, want = evaluate(loaded, atoms, fidelity), evaluate(potential, atoms, fidelity)
        assert_same(got, want, tol, len(atoms), f"reloaded at {fidelity}")


# float32 against float64 of the same weights: the network's float32 rounding, for every
# backbone whatever its own precision. Energies are compared without the elemental references
# (test_precision_change_keeps_the_references checks those). Measured (1 thread):
# <= 3.8e-7 eV/atom (MACEStyle), 8e-6 eV/A and 2.3e-8 eV/A^3 (M3GNet-MatPES-PBE).
PRECISION = dict(energy=5e-6, forces=1e-4, stress=3e-7)  # eV/atom, eV/A, eV/A^3
# or, for large values, this fraction of the largest: float32 rounding is relative (SevenNet-0 on
# these compressed waters: network energy -12 eV, forces up to 56 eV/A, stress 0.17 eV/A^3,
# off by 3e-6, 1.5e-5 and 6e-6 of that)
FLOAT32_RELATIVE = 3e-5


def in_other_precision(backbone):
    """(the session's potential, a fresh one moved to the other precision)."""
    native = backbone.potential
    other_dtype = torch.float32 if native.dtype == torch.float64 else torch.float64
    return native, backbone.fresh().to(other_dtype)


def test_float32_and_float64(backbone):
    """The potential moved to the other precision (float64 <-> float32): every parameter and
    output in the model's precision (energies and references always float64), predictions
    that agree to float32 rounding at both fidelities."""
    native, other = in_other_precision(backbone)
    assert other.dtype != native.dtype and all(p.dtype == other.dtype for p in other.parameters())
    assert other.fidelity_state.elemental_energies.dtype == torch.float64
    for atoms in (water_dimer(), periodic_water()):
        for fidelity in backbone.fidelities:
            outputs = {}
            for model in (native, other):
                graph = model.graph(atoms, fidelity)
                out = model(graph, forces=True, stress=bool(atoms.pbc.all()))
                assert out["energy"].dtype == torch.float64 and out["forces"].dtype == model.dtype
                atom_fidelity = torch.full_like(graph.species, int(graph.fidelity))
                references = model.fidelity_state.reference_energy(graph.species, atom_fidelity)
                out["energy"] = out["energy"] - references.sum()
                outputs[model.dtype] = {k: v.detach().double().numpy() for k, v in out.items()}
            a, b = outputs[torch.float64], outputs[torch.float32]
            where = f"{atoms.get_chemical_formula()} pbc={atoms.pbc.all()} at {fidelity}"
            allowed = {k: max(PRECISION[k] * (len(atoms) if k == "energy" else 1), FLOAT32_RELATIVE * np.abs(a[k]).max())
                       for k in PRECISION if k in a}  # fmt: skip
            assert b["energy"][0] == pytest.approx(a["energy"][0], rel=0, abs=allowed["energy"]), where
            np.testing.assert_allclose(b["forces"], a["forces"], rtol=0, atol=allowed["forces"], err_msg=where)
            if "stress" in a:
                np.testing.assert_allclose(b["stress"], a["stress"], rtol=0, atol=allowed["stress"], err_msg=where)


def test_precision_change_keeps_the_references(backbone):
    """The elemental reference energies are kept in float64 whatever the network's precision
    (fidelity_state.py: float32 would round totals of thousands of eV): moving a model between
    float32 and float64 must leave them exactly as they were, not rounded through float32
    (-2041.8 eV would become -2041.79995 eV, 4.9e-5 eV per O atom, systematic)."""
    native, other = in_other_precision(backbone)
    state, moved = native.fidelity_state, other.fidelity_state
    assert moved.elemental_energies.dtype == moved.scale.dtype == torch.float64
    torch.testing.assert_close(moved.elemental_energies, state.elemental_energies, rtol=0, atol=0)
    torch.testing.assert_close(moved.scale, state.scale, rtol=0, atol=0)
