"""The backbones the conformance suite runs over: ONE list, `BACKBONES`.

Every check in test_conformance.py takes the `backbone` fixture, parametrized over this list,
so every backbone goes through the same code and the same tolerances (per precision, below).
To add a backbone, write a function that returns its Potential and append a `Backbone` to
BACKBONES. The potential must

- know the elements H, O and Si (the test structures use them) and have two fidelities;
- be deterministic (seed what it draws, without touching the global generators);
- call pytest.skip (pytest.importorskip) when its library or weights are absent.

A pretrained model whose second fidelity is added (and so starts as a copy of the first) says
so with `starts_equal=True` and gives `open_fidelity`, which changes the copy's own parameters
so that the check that the fidelity reaches the output has something to see.

Each potential is built once per session, in eval mode; the checks do not change it (one that
changes weights builds another instance, `Subject.fresh()`).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Callable

import numpy as np
import pytest
import torch

from fidelity_adapters import Potential

ELEMENTS = ("H", "O", "Si")
FIDELITIES = ("PBE", "SCAN")
E0 = {"H": -13.6, "O": -2041.8, "Si": -107.2}  # large per-element offsets, as in trained models
INJECT = ("embedding", "messages", "readout")  # a FiLM at every place a backbone offers


@dataclass(frozen=True)
class Tolerances:
    """What a check may differ by, for models in one precision. Absolute values are per atom
    (energies) or per component (forces, stress); `fd` is relative to the largest component."""

    fd_step: float  # central-difference step: Angstrom for positions, strain for the cell
    fd: float  # max |analytic - finite difference| / max |finite difference| (forces; stress)
    energy: float  # eV per atom: invariances, supercells, batches, round trips
    forces: float  # eV/A
    stress: float  # eV/A^3


# Finite differences are five-point central differences (error O(h^4)), so the step can be
# large enough for rounding not to matter. Measured values below: this suite, 1 thread.
# float64: forces and stress <= 6e-8 relative (h = 1e-3 A; rounding of totals of ~4000 eV
# against forces of ~0.01 eV/A dominates for the small untrained models); invariances,
# supercells and batches <= 2e-13 eV/atom, 3e-12 eV/A, 5e-15 eV/A^3.
FLOAT64 = Tolerances(fd_step=1e-3, fd=1e-6, energy=1e-9, forces=1e-9, stress=1e-9)

# float32 (SevenNet's own precision): atomic energies are float32 values of a few eV, so a
# total moves by ~1e-6 eV with any change of summation order or edge-vector rounding, and a
# finite difference carries ~1e-6 / h of rounding: h = 1e-2 A balances it against the O(h^4)
# error. Measured: 1.4e-4 (forces) and 8.5e-4 (stress) relative; invariances, supercells and
# batches <= 9.5e-7 eV/atom, 2.5e-5 eV/A, 1.2e-7 eV/A^3. Asked: about 4-10x that (another
# thread count sums in another order).
FLOAT32 = Tolerances(fd_step=1e-2, fd=3e-3, energy=1e-5, forces=2e-4, stress=2e-6)


# SevenNet-0 switches its edges off with XPLOR between 4.5 and 5 A, a polynomial whose second
# derivative jumps at 4.5 A; the Si pair has a neighbour at 4.501 A, which the five-point
# difference (+-2h) straddles at h = 1e-3 A (4.8e-6 relative error; 4e-12 at h = 3e-4 A), and
# a strain step moves 4.5 A neighbours by 4.5 h: h = 5e-5 stays on one side of the kink.
XPLOR_FLOAT64 = replace(FLOAT64, fd_step=5e-5)


@dataclass(frozen=True)
class Backbone:
    name: str
    build: Callable[[], Potential]  # two fidelities over (at least) ELEMENTS; may skip
    tolerances: Tolerances
    saveable: str | None = None  # None: save_potential / load_potential must round-trip; else why not
    starts_equal: bool = False  # the second fidelity was added to a pretrained model: a copy of the first
    open_fidelity: Callable[[Potential], None] | None = None  # (starts_equal) make the second fidelity differ, in place
    # genuine limitations of the model: check -> why it cannot pass. The check still runs, as a
    # strict xfail (passing it is then an error: remove the entry). A check is named by its test
    # function without "test_", plus its other parameters in brackets: "rotations[improper]".
    limitations: dict[str, str] = field(default_factory=dict)


def _seeded(build: Callable[[], Potential], seed: int = 0) -> Potential:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build()


def _with_references(potential: Potential) -> Potential:
    """Per-element references that differ between the fidelities, and an energy scale != 1, so
    that every check also runs through the reference and scale paths (a fresh wrap has zeros
    and 1). Scale 5: the untrained small networks then give forces of 0.01-0.1 eV/A, not 1e-3."""
    base = np.array([E0[s] for s in ("H", "O", "Si")])  # the elements sorted by atomic number
    potential.fidelity_state.set_references(np.stack([base, base + [0.3, -0.2, 0.1]]), 5.0)
    return potential


# --- native backbones (backbones/), small and in float64 ---------------------------------

def m3gnet() -> Potential:
    from fidelity_adapters import m3gnet_potential

    small = dict(node_dim=16, edge_dim=16, hidden=(16,), readout_hidden=(16, 16), state_dim=8)
    return _with_references(m3gnet_potential(ELEMENTS, FIDELITIES, seed=0, **small).double())


E3NN_TINY = {"channels": 8, "n_basis": 6, "radial_hidden": 8, "readout_hidden": 8}


def mace_style() -> Potential:
    from fidelity_adapters import mace_style_potential

    options = dict(lmax=2, hidden_lmax=1, correlation=3, inject=INJECT, inject_dim=8, **E3NN_TINY)
    return _with_references(mace_style_potential(ELEMENTS, FIDELITIES, seed=0, **options).double())


def nequip_style() -> Potential:
    from fidelity_adapters import nequip_style_potential

    options = dict(lmax=2, inject=INJECT, inject_dim=8, **E3NN_TINY)
    return _with_references(nequip_style_potential(ELEMENTS, FIDELITIES, seed=0, **options).double())


# --- third-party models wrapped unchanged (fidelity_adapters.third_party) -------------------

def mace_torch() -> Potential:
    """A tiny mace-torch ScaleShiftMACE in float64 (as tests/test_third_party.py builds it, for
    three elements); needs the [mace] environment (e3nn 0.4.4), skipped elsewhere."""
    pytest.importorskip("mace")
    from e3nn import o3
    from mace import modules

    from fidelity_adapters.third_party import wrap_third_party

    block = modules.interaction_classes["RealAgnosticResidualInteractionBlock"]
    options = dict(
        r_max=4.0, num_bessel=6, num_polynomial_cutoff=5, max_ell=2, interaction_cls=block, interaction_cls_first=block,
        num_interactions=2, num_elements=3, hidden_irreps=o3.Irreps("8x0e+8x1o"), MLP_irreps=o3.Irreps("8x0e"),
        atomic_energies=np.array([E0["H"], E0["O"], E0["Si"]]), avg_num_neighbors=4.0, atomic_numbers=[1, 8, 14],
        correlation=2, gate=torch.nn.functional.silu, radial_MLP=[8], atomic_inter_scale=1.3, atomic_inter_shift=0.1,
    )  # fmt: skip

    def build():
        default = torch.get_default_dtype()
        torch.set_default_dtype(torch.float64)  # mace builds in the default dtype
        try:
            model = modules.ScaleShiftMACE(**options)
        finally:
            torch.set_default_dtype(default)
        return wrap_third_party(model, FIDELITIES, inject=INJECT, inject_dim=8)

    return _seeded(build)


def nequip() -> Potential:
    """A tiny nequip NequIPGNNModel in float64 (as tests/test_third_party.py builds it; through
    build_nequip, so that it can be saved)."""
    pytest.importorskip("nequip")
    from fidelity_adapters.third_party import build_nequip, wrap_third_party

    model = build_nequip(
        "NequIPGNNModel", seed=0, model_dtype="float64", type_names=list(ELEMENTS), r_max=4.0, num_layers=2, l_max=1,
        parity=True, num_features=8, radial_mlp_depth=1, radial_mlp_width=8, avg_num_neighbors=4.0,
        per_type_energy_scales=1.2, per_type_energy_shifts=dict(E0),
    )  # fmt: skip
    return _seeded(lambda: wrap_third_party(model, FIDELITIES, inject=INJECT, inject_dim=8))


NEQUIP_DTYPE = (
    "nequip fixes a model's precision when it is built (model_dtype; its edge embeddings keep the then default "
    "dtype as a plain attribute), so Module.to(float32) on a float64 model fails with 'expected m1 and m2 to "
    "have the same dtype' in nequip/nn/mlp.py: build it with model_dtype='float32' instead"
)

# --- pretrained models ----------------------------------------------------------------------

def sevenn_mf0() -> Potential:
    """SevenNet-MF-0 from the sevenn wheel, in its own float32: fidelities r2SCAN and PBE are
    its two modalities."""
    pytest.importorskip("sevenn")
    from fidelity_adapters.third_party import load_sevenn

    return load_sevenn("7net-mf-0")


def sevenn0_film() -> Potential:
    """SevenNet-0 (one level, PBE) with SCAN added through a FiLM at every injection site,
    moved to float64: the path a user takes to add a fidelity to a model without modalities.
    The FiLM's default initialisation already makes SCAN differ from PBE; _open_film adds
    seeded noise on top, and the checks' measured margins are for that model."""
    pytest.importorskip("sevenn")
    from fidelity_adapters.third_party import load_sevenn

    potential = _seeded(lambda: load_sevenn("7net-0", FIDELITIES, inject=INJECT, inject_dim=8)).double()
    _open_film(potential)
    return potential


def _open_film(potential: Potential) -> None:
    """Seeded noise (0.05) on every FiLM weight."""
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in potential.injector.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=generator, dtype=torch.float64).to(p.dtype))


SEVENN_NO_PARITY = (
    "SevenNet-MF-0 is built with is_parity=False (irreps 1e, 2e): its energy is invariant under rotations but "
    "not under inversion: x -> -Rx changes the water dimer's energy by 4.6e-3 eV (7.7e-4 eV/atom) and its "
    "forces by up to 9.7e-3 eV/A"
)


SEVENN0_NO_PARITY = "SevenNet-0 is built with is_parity=False, as SevenNet-MF-0: invariant under rotations, not inversion"
SEVENN0_XPLOR_CUTOFF = (
    "SevenNet-0's XPLOR switch has a second derivative that jumps at its 5 A cutoff, and the 1-atom cell has "
    "neighbours at exactly 5.0 A (twice its 2.5 A edge): the energy's second derivative in strain jumps at zero "
    "strain, so the central difference of the stress errs by 0.14 h (7e-6 at h = 5e-5; the analytic stress is "
    "the one-sided limits' common value)"
)


MATGL_PBE = "matgl:M3GNet-MatPES-PBE-v2025.1"


def matgl_m3gnet() -> Potential:
    """matgl's MatPES-PBE M3GNet imported into our M3GNet, in float64, with SCAN added (it
    starts as PBE through zero-initialised state columns)."""
    from fidelity_adapters.pretrained import entry, load_pretrained

    where, why = entry(MATGL_PBE).locate()
    if where is None:
        pytest.skip(f"matgl MatPES weights not found: {why}")
    return load_pretrained(MATGL_PBE, add=["SCAN"], dtype=torch.float64)


def open_state_columns(potential: Potential) -> None:
    """Give the zero-initialised state columns of an imported M3GNet (the input of the first
    bond and atom update layers that the fidelity vector reaches) small random values, as a
    few steps of training at the added fidelity would."""
    generator = torch.Generator().manual_seed(0)
    d = potential.backbone.state_dim
    with torch.no_grad():
        for block in potential.backbone.blocks:
            for gated in (block.edge_update, block.node_update):
                for layer in (gated.value[0], gated.gate[0]):
                    assert not layer.weight[:, -d:].any(), "the state columns were expected to start at zero"
                    noise = torch.randn(layer.weight[:, -d:].shape, generator=generator, dtype=torch.float64)
                    layer.weight[:, -d:] = 0.1 * noise.to(layer.weight.dtype)


BACKBONES = [
    Backbone("M3GNet", m3gnet, FLOAT64),
    Backbone("MACEStyle", mace_style, FLOAT64),
    Backbone("NequIPStyle", nequip_style, FLOAT64),
    Backbone("mace-torch", mace_torch, FLOAT64),
    Backbone("nequip", nequip, FLOAT64, limitations={"float32_and_float64": NEQUIP_DTYPE}),
    Backbone("SevenNet-MF-0", sevenn_mf0, FLOAT32, limitations={"rotations[improper]": SEVENN_NO_PARITY}),
    Backbone("SevenNet-0+FiLM", sevenn0_film, XPLOR_FLOAT64, limitations={
        "rotations[improper]": SEVENN0_NO_PARITY, "cell_smaller_than_the_cutoff": SEVENN0_XPLOR_CUTOFF}),
    Backbone("M3GNet-MatPES-PBE", matgl_m3gnet, FLOAT64, starts_equal=True, open_fidelity=open_state_columns),
]


@dataclass(frozen=True)
class Subject:
    """A backbone's spec and its potential, built once for the whole session."""

    spec: Backbone
    potential: Potential

    def fresh(self) -> Potential:
        """Another instance of the same potential, for a check that changes it. Built again
        rather than deep-copied: copy.deepcopy of a SevenNet potential fails once a nequip
        model was built in the process (TorchScript'ed e3nn code: "ScriptFunction cannot be
        pickled"), and otherwise the copy's state_dict gains e3nn's compiled constants, which
        load_potential then refuses; deep copies are not what these checks are about."""
        return self.spec.build().eval()

    @property
    def tol(self) -> Tolerances:
        return self.spec.tolerances

    @property
    def fidelities(self) -> list[str]:
        return self.potential.fidelities


@pytest.fixture(scope="session", params=BACKBONES, ids=[b.name for b in BACKBONES])
def backbone(request) -> Subject:
    spec: Backbone = request.param
    potential = spec.build().eval()
    assert potential.dtype in (torch.float32, torch.float64)
    assert len(potential.fidelities) == 2, f"{spec.name}: the suite needs two fidelities, got {potential.fidelities}"
    from ase.data import atomic_numbers

    missing = [s for s in ELEMENTS if atomic_numbers[s] not in potential.elements]
    assert not missing, f"{spec.name}: the test structures need {missing}"
    return Subject(spec, potential)
