"""matgl's pretrained M3GNet potentials (matgl 2.0.x files: model.json + state.pt) imported
into our native M3GNet, without importing matgl.

matgl 2.0 computes E = data_std * sum_i e_i + data_mean + sum_i E_ref[element_i]; ours is
E = scale * sum_i e_i + sum_i E_ref[fidelity, element_i], so data_std is the fidelity scale,
the element references become the base fidelity's row, and data_mean must be zero. The
network maps one to one (names below); what differs from our defaults is spelled out as
M3GNet options: MLP widths (`units`), atom messages summed into the bond's neighbour (DGL's
destination), a smooth-Bessel three-body basis scaled by the bond cutoff.

A model with several fidelities gets a global state path (`state_dim` > 0) that the weights
do not have: its input columns in the bond and atom update MLPs start at zero, so before
training every fidelity predicts exactly what the pretrained model does (with the base
fidelity's references copied), and training moves the new fidelities through those columns
as in Ko & Ong's multi-fidelity M3GNet.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

import torch
from ase.data import atomic_numbers

from backbones import M3GNet

from ..potential import Potential, wrap

# settings our M3GNet does not offer: value matgl must have for an import to be exact
_REQUIRED = {
    "rbf_type": "SphericalBessel", "use_smooth": True, "use_phi": False, "is_intensive": False,
    "readout_type": "weighted_atom", "task_type": "regression", "ntargets": 1, "include_state": False,
    "activation_type": "swish", "dim_state_embedding": 0,
}  # fmt: skip
_POTENTIAL_FLAGS_OFF = ("calc_repuls", "calc_hessian", "calc_magmom")


def read_matgl_folder(folder: str | Path) -> tuple[dict, dict]:
    """(model.json's potential kwargs, state dict) of a matgl 2.0 potential folder; the state
    is read with weights_only=True (no code runs) onto the CPU (matgl saved CUDA storage)."""
    folder = Path(folder)
    for name in ("model.json", "state.pt"):
        if not (folder / name).is_file():
            raise FileNotFoundError(f"{folder}: no {name}; expected a matgl 2.0 potential folder (model.json, state.pt)")
    meta = json.loads((folder / "model.json").read_text())
    if meta.get("@class") != "Potential" or meta["kwargs"]["model"].get("@class") != "M3GNet":
        raise ValueError(f"{folder}/model.json: not a matgl M3GNet Potential (class {meta.get('@class')})")
    try:
        state = torch.load(folder / "state.pt", map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises several types for a damaged zip
        raise ValueError(f"{folder}/state.pt: unreadable ({error})") from None
    return meta["kwargs"], state


def backbone_options(model_args: dict) -> dict:
    """Our M3GNet's constructor arguments for matgl's M3GNet init_args (state_dim excluded)."""
    wrong = {k: model_args.get(k) for k, v in _REQUIRED.items() if model_args.get(k, v) != v}
    if wrong:
        raise ValueError(f"matgl M3GNet settings our M3GNet does not implement: {wrong} (needs {_REQUIRED})")
    units, node_dim = int(model_args["units"]), int(model_args["dim_node_embedding"])
    return dict(
        n_elements=len(model_args["element_types"]), cutoff=float(model_args["cutoff"]),
        three_body_cutoff=float(model_args["threebody_cutoff"]), node_dim=node_dim,
        edge_dim=int(model_args["dim_edge_embedding"]), n_radial=int(model_args["max_n"]),
        max_n=int(model_args["max_n"]), max_l=int(model_args["max_l"]), n_blocks=int(model_args["nblocks"]),
        hidden=[units, units], readout_hidden=[node_dim, units, units], messages_to="neighbour",
        three_body_basis="smooth", three_body_basis_cutoff=float(model_args["cutoff"]),
    )  # fmt: skip


def _gated(ours: str, theirs: str, layers: Sequence[int]) -> dict:
    """Name map of a gated MLP: matgl's layers/gates are our value/gate, Linear at the same index."""
    names = {}
    for k in layers:
        for part in ("weight", "bias"):
            names[f"{ours}.value.{k}.{part}"] = f"{theirs}.layers.{k}.{part}"
            names[f"{ours}.gate.{k}.{part}"] = f"{theirs}.gates.{k}.{part}"
    return names


def parameter_names(n_blocks: int, mlp_depth: int, readout_depth: int) -> dict:
    """Our backbone parameter name -> matgl state-dict name (biases of bias-free layers included)."""
    names = {
        "atom_embedding.weight": "model.embedding.layer_node_embedding.weight",
        "bond_embedding.0.weight": "model.embedding.layer_edge_embedding.layers.0.weight",
        "bond_embedding.0.bias": "model.embedding.layer_edge_embedding.layers.0.bias",
    }
    linear = range(0, 2 * mlp_depth, 2)
    for b in range(n_blocks):
        three, conv = f"model.three_body_interactions.{b}", f"model.graph_layers.{b}.conv"
        names[f"three_body.{b}.atom_gate.0.weight"] = f"{three}.update_network_atom.layers.0.weight"
        names[f"three_body.{b}.atom_gate.0.bias"] = f"{three}.update_network_atom.layers.0.bias"
        names.update(_gated(f"three_body.{b}.bond_update", f"{three}.update_network_bond", [0]))
        names.update(_gated(f"blocks.{b}.edge_update", f"{conv}.edge_update_func", linear))
        names.update(_gated(f"blocks.{b}.node_update", f"{conv}.node_update_func", linear))
        names[f"blocks.{b}.edge_radial.weight"] = f"{conv}.edge_weight_func.weight"
        names[f"blocks.{b}.node_radial.weight"] = f"{conv}.node_weight_func.weight"
    names.update(_gated("readouts.0", "model.final_layer.gated", range(0, 2 * readout_depth, 2)))
    return names


def load_matgl_m3gnet(
    folder: str | Path, fidelities: Sequence[str], state_dim: int = 16, dtype: torch.dtype = torch.float32
) -> Potential:
    """Our M3GNet potential with a matgl potential's weights. `fidelities[0]` is the level the
    weights were trained at; one fidelity gives the model exactly (no state), more add the
    zero-initialised state path of `state_dim` (see the module docstring)."""
    kwargs, state = read_matgl_folder(folder)
    for flag in _POTENTIAL_FLAGS_OFF:
        if kwargs.get(flag):
            raise ValueError(f"{folder}: {flag}=True is not supported")
    model_args = kwargs["model"]["init_args"]
    data_mean = float(state["data_mean"])
    if data_mean != 0.0:
        raise ValueError(f"{folder}: data_mean {data_mean} != 0 (a per-structure constant has no per-element place)")
    options = backbone_options(model_args)
    fidelities = list(fidelities)
    backbone = M3GNet(state_dim=state_dim if len(fidelities) > 1 else 0, **options)
    symbols = list(model_args["element_types"])
    numbers = [atomic_numbers[s] for s in symbols]
    potential = wrap(backbone, fidelities, numbers)
    # our species index elements by ascending atomic number; matgl by its element_types order
    order = torch.tensor([numbers.index(z) for z in potential.elements])

    theirs = {k: v.to(torch.float64) for k, v in state.items()}
    theirs["model.embedding.layer_node_embedding.weight"] = theirs["model.embedding.layer_node_embedding.weight"][order]
    mapped = {}
    names = parameter_names(options["n_blocks"], len(options["hidden"]) + 1, len(options["readout_hidden"]) + 1)
    ours = backbone.state_dict()
    for our_name, their_name in names.items():
        if our_name not in ours:  # a bias-free layer
            continue
        if their_name not in theirs:
            raise ValueError(f"{folder}/state.pt has no {their_name} (for our {our_name}): not the expected M3GNet layout")
        value, target = theirs[their_name], ours[our_name]
        if value.shape != target.shape:  # first update layers: the state columns start at zero
            if value.shape[0] != target.shape[0] or value.shape[1] + state_dim != target.shape[1]:
                raise ValueError(f"{their_name}: shape {tuple(value.shape)} does not fit our {our_name} {tuple(target.shape)}")
            value = torch.cat([value, value.new_zeros(value.shape[0], state_dim)], dim=1)
        mapped[our_name] = value
    unused = {k for k in theirs if k.startswith("model.") and k not in {names[o] for o in mapped}} - {
        "model.bond_expansion.rbf.cutoff", "model.basis_expansion.sbf.cutoff"
    }
    if unused:
        raise ValueError(f"{folder}/state.pt has weights this import does not place: {sorted(unused)}")
    missing = [k for k, _ in backbone.named_parameters() if k not in mapped and ".state_update." not in k]
    if missing:
        raise ValueError(f"our parameters without a matgl counterpart: {missing}")
    with torch.no_grad():
        for name, value in mapped.items():
            ours[name].copy_(value)  # state_dict() tensors share the parameters' storage

    references = theirs["element_refs.property_offset"][order] if "element_refs.property_offset" in theirs else None
    table = torch.zeros(len(fidelities), len(potential.elements), dtype=torch.float64)
    if references is not None:
        table[:] = references
    potential.fidelity_state.set_references(table.numpy(), float(theirs["data_std"]))
    return potential.to(dtype)
