"""The potential: backbone + FidelityState -> energy, forces and stress at a named fidelity.

E = scale * sum_i e_i + sum_i E_ref[fidelity, element_i]   (Ko & Ong eq. 4)
Forces are -dE/dpositions and stress (1/V) dE/dstrain, both by autograd: positions and cell
are strained by a zero displacement tensor whose gradient is the virial. The fidelity vector
reaches the backbone as its global state or, for a backbone without one, through a
FidelityInjector (injection.py) into the invariant features.
"""

from __future__ import annotations

import warnings
from contextlib import contextmanager, nullcontext
from typing import Sequence

import numpy as np
import torch
from ase.data import atomic_numbers, chemical_symbols
from torch import nn
from torch_geometric.data import Batch

from .batching import atom_limited
from .data import LabelledStructure, chunks, from_atoms
from .fidelity_state import FidelityState
from .graph import AtomicGraph, build_graph
from .injection import FidelityInjector, check_fidelity_reaches_output
from .references import ReferenceSums, force_scale

INFERENCE_ATOMS = 1024  # atoms per inference batch by default (see Potential.batches)


@contextmanager
def _parameters_frozen(module: nn.Module):
    """Forces and stress of an inference call differentiate with respect to positions and
    strain only. With the parameters not requiring grad for the call, autograd does not keep
    the inputs of every linear layer for weight gradients no one asks for (about 10 % less
    peak memory for M3GNet at 1728 atoms)."""
    trainable = [p for p in module.parameters() if p.requires_grad]
    for p in trainable:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p in trainable:
            p.requires_grad_(True)


def exact_float64_constants(module: nn.Module) -> None:
    """Recompute the coupling coefficients e3nn and the libraries on it keep as float64
    buffers: e3nn's Wigner 3j (`_w3j_l1_l2_l3`) here, and whatever a submodule's own
    `restore_exact_constants()` knows (mace's U matrices). They are made in the dtype a model
    is built in: one built in float32 (every sevenn checkpoint) and moved to float64 keeps them
    rounded to float32 (1.5e-8 off), which turned a rotation of a water dimer into a 2e-9 eV
    energy change for SevenNet-0 in float64, and a FiLM amplified it past the float64 checks.
    Exact, the change is 0."""
    from e3nn.o3 import wigner_3j

    for sub in module.modules():
        for name, buffer in sub._buffers.items():
            if buffer is not None and buffer.dtype == torch.float64 and name.startswith("_w3j_"):
                l1, l2, l3 = (int(part) for part in name.split("_")[2:])
                sub._buffers[name] = wigner_3j(l1, l2, l3, dtype=torch.float64, device=buffer.device)
        if hasattr(sub, "restore_exact_constants"):
            sub.restore_exact_constants()


def _atomic_numbers(elements: Sequence[int | str]) -> list[int]:
    numbers = sorted({atomic_numbers[e] if isinstance(e, str) else int(e) for e in elements})
    if not numbers:
        raise ValueError("the element list is empty")
    return numbers


class Potential(nn.Module):
    def __init__(
        self,
        backbone: nn.Module,
        fidelity_state: FidelityState,
        elements: Sequence[int | str],
        injector: FidelityInjector | None = None,
    ):
        super().__init__()
        self.backbone = backbone
        self.fidelity_state = fidelity_state
        self.elements = _atomic_numbers(elements)
        self.injector = injector
        self.fidelity_low_rank = nn.ModuleList()  # add_low_rank_update's (low_rank.FidelityLowRank)
        self.unfitted_composition = "warn"  # or "error" / "ignore": a composition outside the references' span
        exact_float64_constants(backbone)  # a backbone moved to float64 before it was wrapped

    @property
    def fidelities(self) -> list[str]:
        return self.fidelity_state.fidelities

    def _apply(self, fn, recurse=True):
        super()._apply(fn, recurse)
        exact_float64_constants(self)  # a potential moved to float64
        return self

    @property
    def dtype(self) -> torch.dtype:
        return next(self.backbone.parameters()).dtype

    @property
    def device(self) -> torch.device:
        return next(self.backbone.parameters()).device

    def graph(self, structure, fidelity: str | None = None, check: bool = True) -> AtomicGraph:
        """Graph of one structure (LabelledStructure or ASE Atoms) at a named fidelity."""
        if not isinstance(structure, LabelledStructure):
            structure = from_atoms(structure, fidelity)
        name = fidelity or structure.fidelity
        graph = build_graph(structure, self.elements, self.fidelity_state.index(name), self.backbone.cutoff, check)
        self._check_composition(graph, structure.label, name)
        if hasattr(self.backbone, "augment_graph"):
            self.backbone.augment_graph(graph)
        return graph

    def _check_composition(self, graph, label: str, fidelity: str) -> None:
        if self.unfitted_composition not in ("warn", "error", "ignore"):
            raise ValueError(f"unfitted_composition must be 'warn', 'error' or 'ignore', not {self.unfitted_composition!r}")
        if self.unfitted_composition == "ignore" or not self.fidelity_state.outside_span(graph.species, int(graph.fidelity)):
            return
        counts = torch.bincount(graph.species, minlength=len(self.elements)).tolist()
        formula = "".join(f"{chemical_symbols[z]}{n}" for z, n in zip(self.elements, counts) if n)
        message = (
            f"{label}: composition {formula} is outside the compositions the {fidelity} reference energies were "
            "fitted on, so its energy extrapolates minimum-norm references and can be off by many eV (forces are "
            "unaffected); fit on data that covers it, or set potential.unfitted_composition = 'ignore'"
        )
        if self.unfitted_composition == "error":
            raise ValueError(message)
        warnings.warn(message, stacklevel=3)

    def fit_references(
        self, structures: Sequence[LabelledStructure], refit_scale: bool = True, around_network: bool = False
    ) -> None:
        """Fit per-fidelity elemental energies and (unless told not to: a fine-tuned network
        keeps the scale it was trained with) the energy scale on training structures.

        `around_network=True` corrects the references by what the network and they leave
        unexplained (label minus predicted energy), for a network that is already trained:
        fine-tuning then starts unbiased on these structures instead of having to unlearn the
        network's mean output on a new level of theory, and a trained model loses the mean energy
        error on its training set that a loss dominated by forces leaves. The correction is the
        minimum-norm one, so it moves the references only along the compositions of
        `structures`: a pretrained model refitted on water keeps what its references say about
        other elements and ratios. A fidelity without energy labels among `structures` keeps
        its references."""
        if not around_network:
            sums = ReferenceSums.of(structures, self.elements, self.fidelities)
            scale = sums.force_scale() if refit_scale else float(self.fidelity_state.scale)
            self.fidelity_state.set_references(sums.energies(), scale, sums.spans())
            return
        scale = force_scale(structures) if refit_scale else float(self.fidelity_state.scale)
        current = self.fidelity_state.elemental_energies.cpu().numpy()
        self.fidelity_state.set_references(current, scale)  # the network's energies in the scale fitted for
        residuals = ReferenceSums(self.elements, self.fidelities)
        for chunk in chunks(structures, 64):  # a stream from disk is read once, a chunk at a time
            labelled = [s for s in chunk if s.has_energy]
            for s, e in zip(labelled, self.energies(labelled)):
                residuals.add(s, energy=s.energy - e)
        # a corrected fidelity's references are valid where its old ones were (if it had any),
        # else only on the span of the data just fitted
        span = self.fidelity_state.reference_span.cpu().numpy()
        data_span = residuals.spans()
        for f in range(len(self.fidelities)):
            if residuals.labelled[f] and not current[f].any():
                span[f] = data_span[f]
        self.fidelity_state.set_references(current + residuals.energies(), scale, span)

    def network_energy(self, batch) -> torch.Tensor:
        """scale * sum_i e_i per structure of a batch: its energy without the elemental
        references, with the autograd graph to the parameters."""
        batch = self._as_batch(batch)
        energy = self(batch, forces=False)["energy"]
        reference = self.fidelity_state.reference_energy(batch.species, batch.fidelity[batch.batch])
        return energy - torch.zeros_like(energy).index_add(0, batch.batch, reference)

    def batches(self, structures, fidelity: str | None, batch_size: int = 16, max_atoms: int = INFERENCE_ATOMS):
        """(batch, its structures) for inference: consecutive structures, at most `batch_size`
        of them and `max_atoms` atoms together (batching.atom_limited)."""
        structures = list(structures)
        for chosen in atom_limited(structures, [len(s) for s in structures], batch_size, max_atoms):
            yield self._batch_of(chosen, fidelity), chosen

    def _batch_of(self, structures: list, fidelity: str | None) -> Batch:
        return self._as_batch(Batch.from_data_list([self.graph(s, fidelity) for s in structures]))

    @torch.no_grad()
    def energies(self, structures: Sequence[LabelledStructure], batch_size: int = 16, max_atoms: int = INFERENCE_ATOMS) -> np.ndarray:
        """Predicted energy of each structure at its own fidelity (no forces), as numpy."""
        values = []
        for batch, _ in self.batches(structures, None, batch_size, max_atoms):
            values.extend(self(batch, forces=False)["energy"].cpu().tolist())
        return np.array(values)

    def add_low_rank_update(self, fidelity: str, rank: int = 8) -> nn.Module:
        """Give `fidelity` its own rank-`rank` update of every linear layer, used for its
        structures only, and return it (trainable; freezing the rest is the caller's choice).
        It starts at zero: the fidelity predicts what it did. Every other fidelity keeps its
        predictions exactly, however the update trains."""
        if hasattr(self.backbone, "fidelity_updates"):
            raise ValueError("a SevenNet's e3nn layers take third_party.sevenn.add_low_rank_update (per atom, per path)")
        from .low_rank import FidelityLowRank

        index = self.fidelity_state.index(fidelity)
        if any(u.fidelity == index for u in self.fidelity_low_rank):
            raise ValueError(f"fidelity {fidelity!r} has a low-rank update already")
        with torch.random.fork_rng(devices=[]):  # its random first factor leaves the caller's generator alone
            update = FidelityLowRank(self.backbone, index, rank)
        self.fidelity_low_rank.append(update)
        return update

    def run_backbone(self, method, batch, edge_vectors: torch.Tensor) -> torch.Tensor:
        """Call a backbone method with each structure's fidelity vector: as the global state,
        or per atom on the injector's hooks (the backbone then gets no state). With low-rank
        updates of their own, the fidelities of a batch run one at a time, each with its update."""
        if not len(self.fidelity_low_rank):
            return self._run_backbone(method, batch, edge_vectors)
        updates = {u.fidelity: u for u in self.fidelity_low_rank}
        applied = lambda fidelity: updates[fidelity].applied() if fidelity in updates else nullcontext()  # noqa: E731
        present = batch.fidelity.unique().tolist()
        if len(present) == 1:
            with applied(present[0]):
                return self._run_backbone(method, batch, edge_vectors)
        node_fidelity = batch.fidelity[batch.batch]
        edge_fidelity = node_fidelity[batch.edge_index[0]]
        atomic = None
        for fidelity in present:
            part = Batch.from_data_list(batch.index_select((batch.fidelity == fidelity).nonzero().squeeze(1)))
            with applied(fidelity):
                out = self._run_backbone(method, part, edge_vectors[edge_fidelity == fidelity])
            atomic = out.new_zeros((len(node_fidelity), *out.shape[1:])) if atomic is None else atomic
            atomic = atomic.index_put(((node_fidelity == fidelity).nonzero().squeeze(1),), out)
        return atomic

    def _run_backbone(self, method, batch, edge_vectors: torch.Tensor) -> torch.Tensor:
        state = self.fidelity_state(batch.fidelity)
        if state is not None:  # the embedding may have been left in another precision than the backbone
            state = state.to(self.dtype)
        if self.injector is None:
            return method(batch, edge_vectors, state)
        with self.injector.fidelity(state[batch.batch]):
            return method(batch, edge_vectors, None)

    def _as_batch(self, batch) -> Batch:
        if isinstance(batch, AtomicGraph) and not isinstance(batch, Batch):
            batch = Batch.from_data_list([batch])
        return batch.to(self.device)

    def forward(self, batch, forces: bool = True, stress: bool = False, training: bool = False) -> dict:
        """Energies (B,), and forces (N, 3) / stress (B, 3, 3) in eV, eV/A, eV/A^3.

        `training=True` keeps the graph of forces and stress for a loss on them; otherwise a
        call that computes forces or stress leaves no graph to the parameters behind."""
        batch = self._as_batch(batch)
        dtype = self.dtype
        pos = batch.pos.to(dtype)
        cell = batch.cell.to(dtype)
        n_graphs = batch.num_graphs
        strain = torch.zeros(n_graphs, 3, 3, dtype=dtype, device=pos.device)
        if forces:
            pos.requires_grad_(True)
        if stress:
            strain.requires_grad_(True)
            deformation = torch.eye(3, dtype=dtype, device=pos.device) + strain
            pos = rows_times(pos, deformation[batch.batch])
            cell = rows_times(cell, deformation)

        # An inference call with forces or stress frees its graph in autograd.grad below, so
        # no parameter gradient could be taken from it anyway: record none.
        inference_gradients = (forces or stress) and not training
        with _parameters_frozen(self) if inference_gradients else nullcontext():
            atomic = self.run_backbone(self.backbone, batch, edge_vectors_of(batch, pos, cell))
            reference = self.fidelity_state.reference_energy(batch.species, batch.fidelity[batch.batch])
            atomic = self.fidelity_state.scale * atomic.to(torch.float64) + reference
        energy = torch.zeros(n_graphs, dtype=torch.float64, device=pos.device).index_add(0, batch.batch, atomic)

        out = {"energy": energy, "atomic_energies": atomic}
        inputs = [t for t, wanted in ((pos, forces), (strain, stress)) if wanted]
        if inputs:
            grads = torch.autograd.grad(energy.sum(), inputs, create_graph=training, retain_graph=training)
            if forces:
                out["forces"] = -grads[0]
            if stress:
                out["stress"] = _stress(grads[-1], batch.cell.to(dtype))
        return out

    def predict(self, structures, fidelity: str, batch_size: int = 16, stress: bool = False, max_atoms: int = INFERENCE_ATOMS) -> list[dict]:
        """Energies, forces (and stress) of structures at the named fidelity, as numpy."""
        self.fidelity_state.index(fidelity)
        results = []
        for batch, chosen in self.batches(structures, fidelity, batch_size, max_atoms):
            out = self(batch, forces=True, stress=stress)
            forces = torch.split(out["forces"].detach(), batch.natoms.tolist())
            for k in range(len(chosen)):
                item = {"energy": float(out["energy"][k].detach()), "forces": forces[k].cpu().numpy().astype(np.float64)}
                if stress:
                    item["stress"] = out["stress"][k].detach().cpu().numpy().astype(np.float64)
                results.append(item)
        return results

    @torch.no_grad()
    def structure_features(self, structures, fidelity: str, batch_size: int = 16, max_atoms: int = INFERENCE_ATOMS) -> np.ndarray:
        """One vector per structure: mean and standard deviation over atoms of the backbone's
        last atom features. Describes structures for DIRECT sampling."""
        if not hasattr(self.backbone, "node_features"):
            raise ValueError(f"{type(self.backbone).__name__} offers no node_features() to describe structures with")
        rows = []
        for batch, _ in self.batches(structures, fidelity, batch_size, max_atoms):
            pos, cell = batch.pos.to(self.dtype), batch.cell.to(self.dtype)
            nodes = self.run_backbone(self.backbone.node_features, batch, edge_vectors_of(batch, pos, cell))
            for atoms in torch.split(nodes, batch.natoms.tolist()):
                rows.append(torch.cat([atoms.mean(0), atoms.std(0, unbiased=False)]).double().cpu().numpy())
        return np.stack(rows)

    def describe(self) -> str:
        symbols = [chemical_symbols[z] for z in self.elements]
        n = sum(p.numel() for p in self.parameters() if p.requires_grad)
        return f"{type(self.backbone).__name__} potential: elements {symbols}, fidelities {self.fidelities}, {n:,} parameters"


def edge_vectors_of(batch, pos: torch.Tensor, cell: torch.Tensor) -> torch.Tensor:
    """Vector from each edge's centre atom to its neighbour's periodic image."""
    centre, neighbour = batch.edge_index
    # index_select rather than [] indexing: its backward (index_add) is much faster on CPU
    edge_cells = cell.index_select(0, batch.batch.index_select(0, centre))
    shift_vectors = rows_times(batch.edge_shift.to(pos.dtype), edge_cells)
    return pos.index_select(0, neighbour) + shift_vectors - pos.index_select(0, centre)


def rows_times(rows: torch.Tensor, matrices: torch.Tensor) -> torch.Tensor:
    """rows @ matrices, batched over the leading dimension, as products and sums rather than a
    matmul: TF32 and other reduced-precision matmul modes round a matmul's inputs to 10 bits,
    which would move atoms by about 1e-2 A (75 meV/A of force error measured with TF32 on
    liquid water, docs/precision.md). The geometry stays exact whatever mode the network runs in."""
    vector = rows.dim() == matrices.dim() - 1  # (n, 3) rows times (n, 3, 3), or (n, 3, 3) times (n, 3, 3)
    rows = rows.unsqueeze(-2) if vector else rows
    product = (rows.unsqueeze(-1) * matrices.unsqueeze(-3)).sum(-2)
    return product.squeeze(-2) if vector else product


THIRD_PARTY_LIBRARIES = ("mace", "nequip", "sevenn")


def library_of(model: nn.Module) -> str | None:
    """'mace', 'nequip' or 'sevenn' if the model's class (or a base class) comes from that package."""
    for cls in type(model).__mro__:
        root = cls.__module__.split(".")[0]
        if root in THIRD_PARTY_LIBRARIES:
            return root
    return None


def wrap(
    backbone: nn.Module,
    fidelities: Sequence[str],
    elements: Sequence[int | str],
    inject: Sequence[str] | None = None,
    inject_dim: int | None = None,
) -> Potential:
    """Make a potential that predicts at any of the named fidelities from one backbone.

    The fidelity vector enters through the backbone's global state (`state_dim`), or the
    fidelity picks one of the backbone's readout heads (`n_heads` = number of fidelities, the
    multi-head baseline), or, for a backbone with neither that names `injection_sites()`, an
    `inject_dim` vector (default 16) modulates its invariant features at the places in
    `inject` ("embedding", "messages", "readout"; default messages). Giving either for any
    other model is an error, not an ignored option. An injected model is checked on a probe
    structure: a fidelity that does not change the energy is an error, not a silent no-op.
    A backbone with none of these can only be wrapped for a single fidelity.
    """
    fidelities = list(fidelities)
    state_dim = int(getattr(backbone, "state_dim", 0) or 0)
    n_heads = int(getattr(backbone, "n_heads", 1) or 1)
    if n_heads > 1 and n_heads != len(fidelities):
        raise ValueError(f"{type(backbone).__name__} has {n_heads} readout heads but {len(fidelities)} fidelities were given")
    library = library_of(backbone)
    if library is not None:
        raise TypeError(f"a {library} model needs its adapter: fidelity_adapters.third_party.wrap_third_party(model, ...)")
    injected = len(fidelities) > 1 and state_dim == 0 and n_heads == 1
    if injected and not hasattr(backbone, "injection_sites"):
        raise ValueError(
            f"{type(backbone).__name__} has no global state input (state_dim=0), one readout head and no "
            f"injection_sites(), so {len(fidelities)} fidelities would have nowhere to enter; build it with state_dim > 0"
        )
    numbers = _atomic_numbers(elements)
    n_elements = getattr(backbone, "config", {}).get("n_elements", len(numbers))
    if n_elements != len(numbers):
        raise ValueError(f"backbone was built for {n_elements} elements but {len(numbers)} were given: {elements}")
    dtype = next(backbone.parameters()).dtype  # the fidelity vectors in the network's precision (references stay float64)
    if not injected:
        if inject is not None or inject_dim is not None:
            how = "through its global state" if state_dim else "by readout head" if n_heads > 1 else "nowhere (one fidelity)"
            raise ValueError(f"inject/inject_dim were given, but {type(backbone).__name__} takes the fidelity {how}")
        return Potential(backbone, FidelityState(fidelities, len(numbers), state_dim).to(dtype), numbers)
    inject_dim = 16 if inject_dim is None else inject_dim
    injector = FidelityInjector(backbone, ("messages",) if inject is None else inject, inject_dim).to(dtype)
    potential = Potential(backbone, FidelityState(fidelities, len(numbers), inject_dim).to(dtype), numbers, injector)
    check_fidelity_reaches_output(potential)
    return potential


def _stress(strain_gradient: torch.Tensor, cell: torch.Tensor) -> torch.Tensor:
    """(1/V) dE/dstrain; NaN for a cell without volume (a molecule), never a division by zero,
    whose infinite gradient would turn the weights into NaN even where the stress loss is masked."""
    volume = torch.linalg.det(cell).abs()[:, None, None]
    has_volume = volume > 0
    per_volume = strain_gradient / torch.where(has_volume, volume, torch.ones_like(volume))
    return torch.where(has_volume, per_volume, torch.full_like(per_volume, float("nan")))
