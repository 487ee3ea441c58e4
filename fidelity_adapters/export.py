"""Export a potential at one named fidelity as a self-contained artefact that needs torch only,
not this package, with its fidelity, elements, cutoff and units in its metadata: a torch.export
program (format "export", run by torch in Python), or that program compiled by AOTInductor
(format "aotinductor": a `.pt2` package of C++ kernels that libtorch runs without Python, which
is what the LAMMPS pair style `fidelity/aoti` loads).

torch.export cannot trace `torch.autograd.grad`, and forces and virial are the energy's
gradient. So `make_fx` first traces the whole computation, backward pass included, into one
graph of plain tensor operations with symbolic sizes; torch.export then exports that graph
with the number of atoms and edges dynamic. Everything that runs in the eager model runs in
the trace: the FiLM hooks of injected e3nn backbones become ordinary operations of the graph,
and M3GNet's triplets are built inside it from the edge lengths (`triplets_in_torch`), so the
host only supplies a neighbour list.

Inputs (one structure): positions (N, 3) float64 A; cell (3, 3) float64, rows are vectors;
species (N,) int64, the index of each atom's element in metadata["elements"]; edge_index
(2, E) int64, centre -> neighbour, every pair within the cutoff in both directions; edge_shift
(E, 3) float64, the neighbour's cell offset (its position is pos[j] + shift @ cell).
Outputs: energy () eV, forces (N, 3) eV/A, virial (3, 3) eV = -dE/dstrain (stress = -virial / V).
"""

from __future__ import annotations

import contextlib
import copy
import io
import json
import os
import tempfile
import zipfile
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch
from ase.calculators.calculator import Calculator, all_changes
from ase.data import atomic_numbers, chemical_symbols
from torch import nn

from .calculator import unlabelled_structure, voigt
from .low_rank import weights_of_one_fidelity
from .data import LabelledStructure
from .graph import build_graph
from .potential import edge_vectors_of
from .serialization import atomic_write

FORMAT = "fidelity-adapters-export-1"
METADATA_FILE = "fidelity_adapters.json"
UNITS = {"energy": "eV", "length": "Angstrom", "forces": "eV/Angstrom", "virial": "eV"}


class FixedFidelityPotential(nn.Module):
    """The potential at one fidelity as a function of plain tensors (the exported signature)."""

    def __init__(self, potential, fidelity: str):
        super().__init__()
        self.potential = copy.deepcopy(potential).eval().requires_grad_(False)
        self.fidelity_index = potential.fidelity_state.index(fidelity)
        # one fidelity: its own low-rank update (if any) becomes plain weights
        weights_of_one_fidelity(self.potential, list(self.potential.fidelity_low_rank), self.fidelity_index)
        self.potential.fidelity_low_rank = nn.ModuleList()
        self.register_buffer("fidelity_id", torch.tensor([self.fidelity_index]))
        self.register_buffer("identity", torch.eye(3, dtype=torch.float64))

    def forward(self, positions, cell, species, edge_index, edge_shift):
        potential = self.potential
        dtype = potential.dtype
        positions = positions.clone().requires_grad_(True)
        strain = torch.zeros_like(cell).requires_grad_(True)
        deformation = self.identity + strain
        pos, strained_cell = (positions @ deformation).to(dtype), (cell @ deformation).to(dtype)
        graph = SimpleNamespace(
            edge_index=edge_index, edge_shift=edge_shift, species=species, batch=torch.zeros_like(species), num_graphs=1,
            fidelity=self.fidelity_id,
        )  # fmt: skip
        vectors = edge_vectors_of(graph, pos, strained_cell[None])
        if hasattr(potential.backbone, "augment_graph_in_torch"):
            potential.backbone.augment_graph_in_torch(graph, vectors)
        atomic = potential.run_backbone(potential.backbone, graph, vectors)
        reference = potential.fidelity_state.elemental_energies[self.fidelity_index].index_select(0, species)
        energy = (potential.fidelity_state.scale * atomic.to(torch.float64) + reference).sum()
        position_gradient, strain_gradient = torch.autograd.grad(energy, [positions, strain])
        return energy.detach(), -position_gradient, -strain_gradient


def _example_inputs(potential) -> tuple:
    """Seven atoms in a periodic triclinic cell to trace with. Their count must differ from every
    other input size (2, 3 and the edge count): equal sizes would be unified in the trace and
    the atom count fixed to that constant."""
    cell = np.array([[6.0, 0.0, 0.0], [0.7, 6.2, 0.0], [0.3, -0.4, 6.4]])
    positions = np.random.default_rng(0).uniform(0, 1, size=(7, 3)) @ cell
    numbers = np.array([potential.elements[k % len(potential.elements)] for k in range(7)])
    structure = LabelledStructure(numbers, positions, cell, np.ones(3, bool), potential.fidelities[0], label="export example")
    return graph_inputs(build_graph(structure, potential.elements, 0, potential.backbone.cutoff, check=False))


def graph_inputs(graph) -> tuple:
    return (graph.pos, graph.cell.reshape(3, 3), graph.species, graph.edge_index, graph.edge_shift)


FORMATS = ("export", "aotinductor")


def export_potential(potential, fidelity: str, path: str | Path, format: str = "export") -> dict:
    """Write `potential` at `fidelity` as a torch.export program or an AOTInductor package;
    returns its metadata."""
    if format not in FORMATS:
        raise ValueError(f"export format {format!r} is not one of {FORMATS}")
    program = exported_program(potential, fidelity)
    metadata = {
        "format": FORMAT, "fidelity": fidelity, "model_fidelities": list(potential.fidelities),
        "elements": [chemical_symbols[z] for z in potential.elements], "cutoff": float(potential.backbone.cutoff),
        "units": UNITS, "dtype": str(potential.dtype).removeprefix("torch."), "backbone": type(potential.backbone).__name__,
        "inputs": ["positions", "cell", "species", "edge_index", "edge_shift"], "outputs": ["energy", "forces", "virial"],
        "artefact": format,
    }  # fmt: skip
    if format == "aotinductor":
        package = compile_aotinductor(program, metadata)
        atomic_write(path, lambda tmp: Path(tmp).write_bytes(package))
        return metadata
    buffer = io.BytesIO()  # (torch.export.save warns about a temporary file name that does not end in .pt2)
    torch.export.save(program, buffer, extra_files={METADATA_FILE: json.dumps(metadata)})
    atomic_write(path, lambda tmp: Path(tmp).write_bytes(buffer.getvalue()))
    return metadata


def exported_program(potential, fidelity: str):
    """The torch.export program of `potential` at `fidelity`, atom and edge counts dynamic."""
    from torch.export import Dim
    from torch.fx.experimental.proxy_tensor import make_fx

    module = FixedFidelityPotential(potential, fidelity)
    example = _example_inputs(potential)
    # a backbone whose library fixes sizes in a trace offers a context that avoids it (sevenn)
    with getattr(potential.backbone, "export_context", contextlib.nullcontext)():
        traced = make_fx(module, tracing_mode="symbolic", _allow_non_fake_inputs=True)(*example)
    atoms, edges = Dim("atoms", min=1), Dim("edges", min=1)
    return torch.export.export(
        traced, example, dynamic_shapes=({0: atoms}, None, {0: atoms}, {1: edges}, {0: edges}), strict=False
    )


def compile_aotinductor(program, metadata: dict) -> bytes:
    """The AOTInductor package of `program` (bytes), with the metadata a C++ host reads: the
    whole JSON, and the fidelity, the element symbols (space-separated) and the cutoff on
    their own.

    Compiled with torch's deterministic algorithms on: Inductor then calls ATen for every
    scatter-add (message passing's sums over neighbours) instead of generating its own loops.
    Without it (torch 2.13, CPU) the generated code read a sum over atoms before the scatter
    into those atoms had run, giving energies wrong by about 2e-3 eV/atom, and with buffer
    reuse on it crashed; the deterministic build agrees with the eager model to 1e-15."""
    aoti_metadata = {
        METADATA_FILE: json.dumps(metadata), "fidelity": metadata["fidelity"],
        "elements": " ".join(metadata["elements"]), "cutoff": repr(metadata["cutoff"]),
    }  # fmt: skip
    deterministic, warn_only = torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        with tempfile.TemporaryDirectory() as folder:
            package = Path(folder) / "model.pt2"
            torch._inductor.aoti_compile_and_package(
                program, package_path=str(package), inductor_configs={"aot_inductor.metadata": aoti_metadata}
            )
            return package.read_bytes()
    finally:
        torch.use_deterministic_algorithms(deterministic, warn_only=warn_only)


class ExportedPotential:
    """A loaded export at the fidelity it was exported at; called with the graph tensors."""

    def __init__(self, path: str | Path, fidelity: str):
        try:
            with zipfile.ZipFile(path) as archive:
                compiled = any("/data/aotinductor/" in name for name in archive.namelist())
            self.module, self.metadata = _load_compiled(path) if compiled else _load_program(path)
        except (RuntimeError, ValueError, KeyError, OSError, zipfile.BadZipFile) as error:
            raise ValueError(f"{path}: not a readable exported potential ({type(error).__name__}: {error})") from None
        if self.metadata.get("format") != FORMAT:
            raise ValueError(f"{path}: format {self.metadata.get('format')!r}, expected {FORMAT!r}")
        if fidelity != self.metadata["fidelity"]:
            raise ValueError(
                f"{path} was exported at fidelity {self.metadata['fidelity']!r}, not {fidelity!r} "
                f"(export one file per fidelity; the model knows {self.metadata['model_fidelities']})"
            )
        self.fidelity = fidelity
        self.elements = [atomic_numbers[e] for e in self.metadata["elements"]]

    def __call__(self, *inputs):
        return self.module(*inputs)


def _load_program(path) -> tuple:
    extra = {METADATA_FILE: ""}
    program = torch.export.load(os.fspath(path), extra_files=extra)
    return program.module(), json.loads(extra[METADATA_FILE])


def _load_compiled(path) -> tuple:
    compiled = torch._inductor.aoti_load_package(os.fspath(path))
    return compiled, json.loads(compiled.get_metadata()[METADATA_FILE])


class ExportedCalculator(Calculator):
    """ASE calculator of an exported file at its fidelity (our neighbour list feeds it)."""

    implemented_properties = ["energy", "free_energy", "forces", "stress"]

    def __init__(self, path: str | Path, fidelity: str, **kwargs):
        super().__init__(**kwargs)
        self.exported = ExportedPotential(path, fidelity)

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        super().calculate(atoms, properties, system_changes)
        structure = unlabelled_structure(self.atoms, self.exported.fidelity)
        graph = build_graph(structure, self.exported.elements, 0, self.exported.metadata["cutoff"])
        energy, forces, virial = self.exported(*graph_inputs(graph))
        self.results = {"energy": float(energy), "free_energy": float(energy), "forces": forces.detach().numpy().astype(np.float64)}
        if self.atoms.pbc.all():
            self.results["stress"] = voigt(-virial.detach().numpy().astype(np.float64) / self.atoms.get_volume())
