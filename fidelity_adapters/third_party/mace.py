"""mace-torch's MACE / ScaleShiftMACE (tested: mace-torch 0.3.16, e3nn 0.4.4, torch 2.13) as a
backbone.

The model gets zero positions and `shifts` = our edge vectors, so its internal edge vectors
(positions[receiver] - positions[sender] + shifts) are ours bit for bit, and the gradients of
its energy flow back through them to our positions and strain. edge_index is used unchanged:
our [centre, neighbour] is mace's [sender, receiver], vector from the first to the second.
Its E0 atomic energies are switched off inside our calls (a hook on `atomic_energies_fn`
that returns zeros) and handed to our per-fidelity references instead (`reference_energies`):
E0 is exactly what Potential's E_ref[fidelity, element] stands for, and kept in the network it
would be one E0 for every fidelity and multiplied by our energy scale. ScaleShiftMACE's scale
and shift stay in the network part. Injection sites: "embedding" (node_embedding),
"messages" (the output of every products[i], the features the next interaction and the
readouts see), "readout" (each readout's input).

Saving: the model's constructor config is mace's own `extract_config_mace_model` written as
plain JSON (`_encode`: irreps as strings, classes and functions as qualified names, arrays
and tensors as lists), and read back through an allow-list (`_decode`: classes from mace.modules,
functions from torch.nn.functional or torch's compiled ops), so a hand-edited file cannot
make loading import or call anything else.
"""

from __future__ import annotations

import functools
import importlib
import types
from typing import Sequence

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from backbones.injection_sites import InjectionSite

from .base import ThirdPartyBackbone

MODEL_CLASSES = ("MACE", "ScaleShiftMACE")  # the mace.modules classes the adapter is tested with, rebuilt by name
FUNCTION_MODULES = {"torch.nn.functional": F, "torch": torch}  # where a config's functions (gate) may come from


class MaceBackbone(ThirdPartyBackbone):
    library = "mace"

    def __init__(self, model: nn.Module, elements: Sequence[int | str] | None = None, head: str | None = None):
        for needed in ("atomic_numbers", "r_max", "atomic_energies_fn", "node_embedding", "products", "readouts"):
            if not hasattr(model, needed):
                raise TypeError(f"{type(model).__name__} has no {needed!r}: not a mace.modules.MACE-like model")
        super().__init__(model, model.atomic_numbers.tolist(), elements, float(model.r_max))
        heads = list(getattr(model, "heads", None) or ["Default"])
        if head is not None and head not in heads:
            raise ValueError(f"{type(model).__name__} has heads {heads}, not {head!r}")
        self.head = heads.index(head) if head is not None else 0
        self.config["head"] = self.options["head"] = heads[self.head]
        self._in_call = False
        model.atomic_energies_fn.register_forward_hook(_ZeroE0(self))

    def reference_energies(self) -> np.ndarray:
        e0 = torch.atleast_2d(self.model.atomic_energies_fn.atomic_energies.detach())[self.head]
        return e0.to(torch.float64).cpu().numpy()[self.model_index.cpu().numpy()]

    def restore_exact_constants(self) -> None:
        """mace's symmetric contractions keep their U matrices (generalised Clebsch-Gordan
        coefficients) as buffers made in the dtype the model was built in; built in float32 and
        moved to float64 they stay rounded to float32 (up to 1.2e-7 off), which turned a
        rotation of a water dimer into a 3e-10 eV energy change (1e-14 when exact). Each float64
        U matrix is recomputed in float64 and replaces the buffer when it agrees with it to
        float32 rounding (mace stores neither the irreps nor the CG convention a contraction
        was built with: both conventions are tried; one that matches neither is left as it is)."""
        from mace.modules.symmetric_contraction import SymmetricContraction

        for module in self.model.modules():
            if not isinstance(module, SymmetricContraction):
                continue
            for contraction, irrep_out in zip(module.contractions, module.irreps_out):
                for nu in range(1, contraction.correlation + 1):
                    name = f"U_matrix_{nu}"
                    held = contraction._buffers[name]
                    if held.dtype != torch.float64:
                        continue
                    for reduced in (False, True):
                        try:
                            exact = _exact_u_matrix(str(contraction.coupling_irreps), str(irrep_out.ir), nu, reduced)
                        except ImportError:  # the reduced convention needs cuequivariance
                            continue
                        if exact.shape == held.shape and exact.numel() and bool((exact - held.cpu()).abs().max() <= 1e-6):
                            contraction._buffers[name] = exact.to(held.device, copy=True)  # saved tensors share no memory
                            break

    def forward(self, graph, edge_vectors: torch.Tensor, state: torch.Tensor | None) -> torch.Tensor:
        self._no_state(state)
        n, dtype, device = graph.species.shape[0], edge_vectors.dtype, edge_vectors.device
        batch = getattr(graph, "batch", None)
        batch = torch.zeros(n, dtype=torch.long, device=device) if batch is None else batch
        ptr = getattr(graph, "ptr", None)
        ptr = torch.tensor([0, n], device=device) if ptr is None else ptr
        n_graphs = ptr.numel() - 1
        data = {  # a fresh dict every call: mace writes into the one it gets
            "positions": torch.zeros(n, 3, dtype=dtype, device=device),
            "node_attrs": F.one_hot(self.model_index[graph.species], len(self.elements)).to(dtype),
            "edge_index": graph.edge_index,
            "shifts": edge_vectors,
            "unit_shifts": torch.zeros_like(edge_vectors),  # only read for mace's own stress, which is not asked for
            "cell": torch.zeros(3 * n_graphs, 3, dtype=dtype, device=device),
            "batch": batch,
            "ptr": ptr,
            "head": torch.full((n_graphs,), self.head, dtype=torch.long, device=device),
        }
        self._in_call = True
        try:
            out = self.model(data, training=self.training, compute_force=False, compute_virials=False, compute_stress=False)
        finally:
            self._in_call = False
        return out["node_energy"]

    def model_config(self) -> tuple[str, dict]:
        """The class name and mace's extract_config_mace_model of the model, as plain JSON."""
        from mace import modules
        from mace.tools.scripts_utils import extract_config_mace_model

        name = type(self.model).__name__
        if name not in MODEL_CLASSES or type(self.model) is not getattr(modules, name):
            raise ValueError(f"a {type(self.model).__module__}.{name} cannot be saved: only mace.modules' "
                             f"{' and '.join(MODEL_CLASSES)} are rebuilt from their config")  # fmt: skip
        if name == "MACE":
            config = extract_config_mace_model(_SeenAsScaleShiftMACE(self.model))
            del config["atomic_inter_scale"], config["atomic_inter_shift"]
        else:
            config = extract_config_mace_model(self.model)
        return name, {key: _encode(value, key) for key, value in config.items()}

    def injection_sites(self) -> dict:
        model = self.model
        products = list(model.products)
        product_irreps = [str(p.linear.irreps_out) for p in products]
        readout_inputs = [product_irreps[-1 if len(model.readouts) == 1 else i] for i in range(len(model.readouts))]
        return {
            "embedding": [InjectionSite(model.node_embedding, str(model.node_embedding.linear.irreps_out))],
            "messages": [InjectionSite(p, irreps) for p, irreps in zip(products, product_irreps)],
            "readout": [InjectionSite(r, irreps, on_input=True, index=0) for r, irreps in zip(model.readouts, readout_inputs)],
        }


@functools.lru_cache(maxsize=None)
def _exact_u_matrix(irreps_in: str, irrep_out: str, correlation: int, reduced: bool) -> torch.Tensor:
    """mace's U matrix of one contraction in float64 (cached: it takes seconds for large L)."""
    from mace.tools.cg import U_matrix_real

    return U_matrix_real(irreps_in, irrep_out, correlation, use_cueq_cg=reduced, dtype=torch.float64)[-1]


class _ZeroE0:
    """Forward hook on atomic_energies_fn: zeros inside MaceBackbone's calls (the E0s live in
    our references), the model's own E0 otherwise, so the model called directly is unchanged.
    A class, not a closure, so that a deep copy of the potential hooks the copied backbone."""

    def __init__(self, backbone: MaceBackbone):
        self.backbone = backbone

    def __call__(self, module, args, output):
        return torch.zeros_like(output) if self.backbone._in_call else output


class _SeenAsScaleShiftMACE:
    """A plain MACE as mace's extract_config_mace_model takes it: that function accepts
    ScaleShiftMACE (by class name) and reads nothing of the subclass but `scale_shift`, so every
    other attribute is the MACE's own; the identity scale and shift it reports are dropped."""

    def __init__(self, model: nn.Module):
        self._mace = model
        self.scale_shift = types.SimpleNamespace(scale=torch.ones(()), shift=torch.zeros(()))

    def __getattr__(self, name: str):
        return getattr(self._mace, name)


_SeenAsScaleShiftMACE.__name__ = "ScaleShiftMACE"


def _encode(value, key: str):
    """A value of mace's model config as JSON. Every dict is tagged ("irreps", "class",
    "function", or "dict" for a plain one), so decoding is unambiguous; a class or function
    must resolve back to itself through `_decode`'s allow-list."""
    from e3nn import o3

    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, o3.Irreps):  # before tuple: Irreps is one
        return {"irreps": str(value)}
    if isinstance(value, (list, tuple)):
        return [_encode(v, key) for v in value]
    if isinstance(value, dict):
        return {"dict": {str(k): _encode(v, f"{key}.{k}") for k, v in value.items()}}
    if isinstance(value, (np.ndarray, np.generic, torch.Tensor)):  # E0s, scale, shift, atomic numbers: mace takes lists too
        return value.tolist()
    if isinstance(value, type):
        encoded = {"class": f"{value.__module__}.{value.__qualname__}"}
    elif callable(value):
        name = getattr(value, "__name__", "?")
        encoded = {"function": f"{'torch.nn.functional' if getattr(F, name, None) is value else 'torch'}.{name}"}
    else:
        raise ValueError(f"mace config {key}: a {type(value).__name__} cannot be saved as JSON")
    if _decode(encoded, key) is not value:
        raise ValueError(f"mace config {key}: {value!r} is not reachable as {encoded} and cannot be saved by name")
    return encoded


def _decode(value, key: str):
    """The config value `_encode` wrote. Classes only from mace.modules (torch modules),
    functions only from torch.nn.functional or torch's compiled ops (not torch.load, say), so a
    hand-edited file cannot name other code: anything else is a ValueError naming the key."""
    from e3nn import o3

    if isinstance(value, list):
        return [_decode(v, key) for v in value]
    if not isinstance(value, dict):
        return value
    if len(value) != 1:
        raise ValueError(f"{key}: {sorted(value)} is not an encoded value")
    ((tag, content),) = value.items()
    if tag not in ("dict", "irreps", "class", "function"):
        raise ValueError(f"{key}: unknown tag {tag!r}")
    if not isinstance(content, dict if tag == "dict" else str):
        raise ValueError(f"{key}: {tag} {content!r} is not a {'dict' if tag == 'dict' else 'name'}")
    if tag == "dict":
        return {k: _decode(v, f"{key}.{k}") for k, v in content.items()}
    if tag == "irreps":
        return o3.Irreps(content)
    if tag == "class":
        return _mace_class(content, key)
    return _torch_function(content, key)


def _mace_class(name: str, key: str) -> type:
    module, _, attribute = name.rpartition(".")
    if module != "mace.modules" and not module.startswith("mace.modules."):
        raise ValueError(f"{key}: class {name!r} is not from mace.modules")
    try:
        found = getattr(importlib.import_module(module), attribute)
    except (ImportError, AttributeError):
        raise ValueError(f"{key}: mace has no class {name!r}") from None
    if not (isinstance(found, type) and issubclass(found, nn.Module)):
        raise ValueError(f"{key}: {name!r} is not a mace module class")
    return found


def _torch_function(name: str, key: str):
    module, _, attribute = name.rpartition(".")
    found = None
    if module in FUNCTION_MODULES and not attribute.startswith("_"):
        found = getattr(FUNCTION_MODULES[module], attribute, None)
    if module == "torch" and not isinstance(found, types.BuiltinFunctionType):  # torch's Python functions include torch.load
        found = None
    if found is None or isinstance(found, type) or not callable(found):
        raise ValueError(f"{key}: function {name!r} is not one of torch.nn.functional's or torch's compiled ops")
    return found


def rebuild_mace(saved: dict, dtype: torch.dtype, path) -> MaceBackbone:
    """The adapter over a new model of the saved class and config (ThirdPartyBackbone.saved_config)."""
    from mace import modules

    name = saved["model"]
    if name not in MODEL_CLASSES:
        raise ValueError(f"{path}: backbone_config.model {name!r} is not one of {list(MODEL_CLASSES)}")
    config = {key: _decode(value, f"{path}: backbone_config.config.{key}") for key, value in saved["config"].items()}
    default = torch.get_default_dtype()
    with torch.random.fork_rng(devices=[]):  # initial weights, replaced by the saved ones: the caller's generator is left alone
        torch.set_default_dtype(dtype)  # mace builds in the default dtype
        try:
            model = getattr(modules, name)(**config)
        finally:
            torch.set_default_dtype(default)
    return MaceBackbone(model, head=saved["options"].get("head"))
