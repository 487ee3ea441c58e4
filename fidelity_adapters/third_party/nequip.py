"""nequip's models (tested: nequip 0.19.1, e3nn 0.6, torch 2.13; the >= 0.7 API: GraphModel
from a @model_builder such as NequIPGNNModel) as a backbone.

We call the model's energy network (`model.model.func`, the SequentialGraphNetwork inside
ForceStressOutput) directly, with our edge vectors under its `edge_vectors` key: nequip then
uses them as given (it computes them only when absent), so they are ours exactly and our
autograd through them gives forces and stress; its own force/stress output is skipped.
edge_index is used unchanged (nequip's [centre, neighbour] is ours). Its per-type energy
shifts (PerTypeScaleShift) are subtracted from `atomic_energy` and handed to our per-fidelity
references instead (`reference_energies`), as for mace's E0: they are what E_ref[fidelity,
element] stands for. Per-type scales stay in the network part. Injection sites: "embedding"
(type_embed's node_features), "messages" (each ConvNetLayer's node_features), "readout" (the
node_features entering per_atom_energy_readout). Models without ConvNetLayers (Allegro, say)
offer no "messages" site.

Saving: a built nequip model keeps only its dtype, type names and cutoff, not its builder's
arguments, so it cannot be rebuilt from itself. `build_nequip` builds one and keeps the
builder's name and arguments (plain JSON) on it; the adapter saves those and
`rebuild_nequip` calls the builder again. A model built otherwise is refused by save_potential.
"""

from __future__ import annotations

import json
import random
from contextlib import contextmanager
from typing import Sequence

import numpy as np
import torch
from ase.data import atomic_numbers
from torch import nn

from backbones.injection_sites import InjectionSite

from .base import ThirdPartyBackbone

NODE_FEATURES = "node_features"
BUILDERS = ("NequIPGNNModel", "PresetNequIPGNNModel", "FullNequIPGNNModel")  # nequip.model's GNN builders
RECIPE = "fidelity_adapters_recipe"  # build_nequip's record on the model: {"builder": name, "kwargs": {...}}


@contextmanager
def nequip_global_state(**options):
    """nequip.utils.global_state.set_global_state() (nequip's builders require it) without its
    side effects on the caller: the default dtype, the torch / numpy / python random generators
    and the two torch._dynamo flags nequip turns on (capturing dynamic-output-shape ops and scalar
    outputs, which make a later torch.export of our models specialise the atom and edge counts)
    are restored afterwards, and set again inside every block. (Its jit fusion setting stays:
    nequip sets it once per process.) Build nequip models inside the block."""
    from nequip.utils.global_state import set_global_state

    dtype, np_state, py_state = torch.get_default_dtype(), np.random.get_state(), random.getstate()
    nequip_dynamo = dict(capture_dynamic_output_shape_ops=True, capture_scalar_outputs=True)
    with torch.random.fork_rng(devices=[]), torch._dynamo.config.patch(**nequip_dynamo):
        try:
            set_global_state(**options)
            yield
        finally:
            torch.set_default_dtype(dtype)
            np.random.set_state(np_state)
            random.setstate(py_state)


def build_nequip(builder: str, **kwargs) -> nn.Module:
    """nequip.model.<builder>(**kwargs), built inside nequip_global_state, with the builder's
    name and arguments kept on the model so that a potential wrapped around it can be saved.
    The arguments must be plain JSON (numbers, strings, lists, dicts): a pair_potential
    module, say, could not be written to the file."""
    import nequip.model

    if builder not in BUILDERS:
        raise ValueError(f"unknown nequip builder {builder!r}; known: {list(BUILDERS)}")
    for key, value in kwargs.items():
        try:
            json.dumps(value)
        except (TypeError, ValueError):
            raise ValueError(f"nequip builder argument {key}={value!r} is not plain JSON: "
                             "a model built with it could not be saved") from None  # fmt: skip
    with nequip_global_state():
        model = getattr(nequip.model, builder)(**kwargs)
    setattr(model, RECIPE, {"builder": builder, "kwargs": json.loads(json.dumps(kwargs))})
    return model


def _energy_network(model: nn.Module) -> nn.Module:
    inner = getattr(model, "model", None)
    inner = getattr(inner, "func", inner)  # ForceStressOutput(func=...) unless built with do_derivatives=False
    if inner is None or not hasattr(inner, "per_atom_energy_readout"):
        raise TypeError(f"{type(model).__name__} is not a nequip GraphModel with a per_atom_energy_readout")
    return inner


class NequipBackbone(ThirdPartyBackbone):
    library = "nequip"

    def __init__(self, model: nn.Module, elements: Sequence[int | str] | None = None):
        """`elements`: the element of each of the model's type_names, in that order; default:
        the type names read as chemical symbols."""
        network = _energy_network(model)
        type_names = list(model.type_names)
        if elements is None:
            unknown = [t for t in type_names if t not in atomic_numbers]
            if unknown:
                raise ValueError(f"type names {unknown} are not chemical symbols: give elements=[...] in type_names order")
            elements = type_names
        elif len(elements) != len(type_names):
            raise ValueError(f"{len(elements)} elements for {len(type_names)} type names {type_names}")
        model_elements = [atomic_numbers[e] if isinstance(e, str) else int(e) for e in elements]
        named = zip(type_names, elements, model_elements)
        clashes = [(t, e) for t, e, z in named if t in atomic_numbers and atomic_numbers[t] != z]
        if clashes:
            raise ValueError(f"element(s) given for type names that are other elements' symbols: {clashes}")
        super().__init__(model, model_elements, None, float(network.edge_norm.r_max))
        self.type_names = type_names
        self.options["elements"] = model_elements
        self.recipe: dict | None = getattr(model, RECIPE, None)  # set by build_nequip: what a saved model is rebuilt from

    @property
    def network(self) -> nn.Module:
        """The energy network inside self.model (a property: registered twice it would be saved twice)."""
        return _energy_network(self.model)

    def _shifts(self) -> torch.Tensor | None:
        scale_shift = getattr(self.network, "per_type_energy_scale_shift", None)
        if scale_shift is None or not getattr(scale_shift, "has_shifts", False):
            return None
        return scale_shift.shifts.reshape(-1).expand(len(self.type_names))  # one shared shift or one per type

    def reference_energies(self) -> np.ndarray:
        shifts = self._shifts()
        if shifts is None:
            return np.zeros(len(self.elements))
        return shifts.detach().to(torch.float64).cpu().numpy()[self.model_index.cpu().numpy()]

    def forward(self, graph, edge_vectors: torch.Tensor, state: torch.Tensor | None) -> torch.Tensor:
        self._no_state(state)
        n, device = graph.species.shape[0], edge_vectors.device
        batch = getattr(graph, "batch", None)
        batch = torch.zeros(n, dtype=torch.long, device=device) if batch is None else batch
        natoms = getattr(graph, "natoms", None)
        natoms = torch.tensor([n], device=device) if natoms is None else natoms
        types = self.model_index[graph.species]
        data = {
            "pos": torch.zeros(n, 3, dtype=edge_vectors.dtype, device=device),  # unused: edge_vectors are given
            "atom_types": types,
            "edge_index": graph.edge_index,
            "edge_vectors": edge_vectors,
            "batch": batch,
            "num_atoms": natoms.to(device),
        }
        energy = self.network(data)["atomic_energy"].reshape(-1)
        shifts = self._shifts()
        return energy if shifts is None else energy - shifts.to(energy.dtype)[types]

    def model_config(self) -> tuple[str, dict]:
        if self.recipe is None:
            raise ValueError("this nequip model does not record how it was built, so it cannot be saved: build it with "
                             "fidelity_adapters.third_party.build_nequip('NequIPGNNModel', seed=..., ...) instead of "
                             "calling nequip's builder directly")  # fmt: skip
        return self.recipe["builder"], self.recipe["kwargs"]

    def injection_sites(self) -> dict:
        from nequip.nn import ConvNetLayer

        network = self.network
        layers = [m for m in network.children() if isinstance(m, ConvNetLayer)]
        embed = getattr(network, "type_embed", None)
        readout = network.per_atom_energy_readout
        return {
            "embedding": [] if embed is None else [InjectionSite(embed, embed.irreps_out[NODE_FEATURES], key=NODE_FEATURES)],
            "messages": [InjectionSite(m, m.irreps_out[NODE_FEATURES], key=NODE_FEATURES) for m in layers],
            "readout": [InjectionSite(readout, readout.irreps_in[NODE_FEATURES], on_input=True, index=0, key=NODE_FEATURES)],
        }


def rebuild_nequip(saved: dict, dtype: torch.dtype, path) -> NequipBackbone:
    """The adapter over a new model from the saved builder and arguments
    (ThirdPartyBackbone.saved_config); `dtype` is already among them (model_dtype)."""
    if saved["model"] not in BUILDERS:
        raise ValueError(f"{path}: backbone_config.model {saved['model']!r} is not one of nequip's builders {list(BUILDERS)}")
    model = build_nequip(saved["model"], **saved["config"])
    return NequipBackbone(model, elements=saved["options"].get("elements"))
