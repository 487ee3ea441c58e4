"""SevenNet (tested: sevenn 0.13.0, e3nn 0.6, torch 2.13) as a backbone, and its pretrained
checkpoints (7net-0, 7net-l3i5, 7net-mf-0) as multi-fidelity potentials.

    potential = load_sevenn("7net-mf-0")                       # fidelities r2SCAN, PBE
    potential = add_fidelity(potential, "SCAN", like="r2SCAN")  # a trainable copy of r2SCAN

Edges. A sevenn model (`AtomGraphSequential`) is a sequence of modules passing one dict; we
run its modules ourselves, up to its energy sum (the first `AtomReduce`), with our edge
vectors under its `edge_vec` key and our `edge_index` unchanged: sevenn's edge_index[0] is the
centre that receives the message and edge_vec points from it to the neighbour's image, as
ours. Skipped: its input preprocessing (atomic number and modality-name lookups, which we
give as indices), its total energy and its `force_output` (autograd through `edge_vec`):
forces and stress come from our autograd through our edge vectors, as for every backbone.
sevenn's one-hot embeddings are float32 whatever the model's dtype; we cast them to the
model's dtype, so a `.double()` potential runs in float64 (sevenn's own calculator cannot).

Per-element energies. The rescale layer (atomic_energy = scale[type] * e + shift[type], the
shift per modality in 7net-mf-0) ends in per-element offsets: those are what our
E_ref[fidelity, element] stands for, so the backbone subtracts them and `load_sevenn` puts
them into every fidelity's references (each fidelity gets the shifts of its modality). A
model with one shared shift (sevenn's `Rescale`) has it moved the same way: it is a
per-element offset with equal values. The scales stay in the network part.

Fidelities. A multi-modal sevenn model (7net-mf-0) takes its modality as one-hot columns
appended to the 0e inputs of some linear layers (plus a per-modality shift). Each of our
fidelities names the sevenn modality it uses (`modal=[...]`, one per fidelity, in order);
the backbone reads the structure's fidelity index from the graph and feeds that modality, so
`wrap` sees one "head" per fidelity (n_heads) and injects nothing. Several fidelities may
name the same modality: they then share the network and differ only by their references.
`add_fidelity(potential, new, like=base)` instead appends a modality column copied from the
base's to every modal linear layer (and the base's shift row): the new fidelity predicts
exactly what the base does and trains its own columns; `add_low_rank_update(potential, new)`
gives it more: a low-rank update of every linear layer on its own atoms only
(sevenn_low_rank.py). A model without modalities (7net-0,
7net-l3i5) is one fidelity, or takes a FiLM at `injection_sites()` like the mace and nequip
adapters ("embedding": after onehot_to_feature_x; "messages": after every equivariant gate;
"readout": the input of the layer after the last gate).
"""

from __future__ import annotations

from contextlib import ExitStack, contextmanager
from typing import Sequence

import numpy as np
import torch
from torch import nn

from backbones.injection_sites import InjectionSite

from ..fidelity_state import FidelityState
from ..potential import Potential, wrap
from .base import ThirdPartyBackbone

# each pretrained model's own fidelity names -> its sevenn modality (None: no modalities; one fidelity, "PBE")
PRETRAINED = {"7net-0": None, "7net-l3i5": None, "7net-mf-0": {"r2SCAN": "R2SCAN", "PBE": "PBE"}}


class SevennBackbone(ThirdPartyBackbone):
    library = "sevenn"

    def __init__(
        self, model: nn.Module, elements: Sequence[int | str] | None = None, modal: str | Sequence[str] | None = None
    ):
        """`modal`: for a multi-modal model, the sevenn modality of each fidelity, in the order
        of the fidelities it will be wrapped with (one name for one fidelity). The model is
        switched to sevenn's batched mode (its calculator switches its own copy back)."""
        if getattr(model, "type_map", None) is None or not getattr(model, "cutoff", 0.0):
            raise TypeError(f"{type(model).__name__} is not a sevenn AtomGraphSequential with a type_map and a cutoff")
        type_map = dict(model.type_map)
        super().__init__(model, sorted(type_map, key=type_map.get), elements, float(model.cutoff))
        model.set_is_batch_data(True)
        available = list(model.modal_map or {})
        if not available:
            if modal is not None:
                raise ValueError(f"this sevenn model has no modalities; modal={modal!r} cannot be chosen")
            modals = []
        else:
            if modal is None:
                raise ValueError(f"this sevenn model is multi-modal: choose modal= among {available}")
            modals = [modal] if isinstance(modal, str) else list(modal)
            unknown = [m for m in modals if m not in available]
            if unknown or not modals:
                raise ValueError(f"unknown sevenn modality {unknown or modals}; this model has {available}")
        self.modals = modals
        index = torch.tensor([model.modal_map[m] for m in modals], dtype=torch.long)
        self.register_buffer("modal_index", index, persistent=False)
        self.n_heads = max(len(modals), 1)
        self.config["modals"] = modals
        self.recipe: dict | None = None  # how load_sevenn built it (set there): what a saved model is rebuilt from
        self.fidelity_updates = nn.ModuleList()  # add_low_rank_update's, one per fidelity that has one
        _rescale_module(model)  # refuses a model with several

    @property
    def rescale(self) -> nn.Module | None:
        """The model's rescale layer (a property: registered here too it would be saved twice)."""
        return _rescale_module(self.model)

    def _shifts(self) -> torch.Tensor | None:
        """(modalities or 1, model types): the rescale layer's shifts, one row per sevenn
        modality when they are modality-wise."""
        r = self.rescale
        if r is None:
            return None
        n_types = len(self.elements)
        if getattr(r, "use_modal_wise_shift", False):
            return r.shift
        return r.shift.reshape(-1).expand(n_types)[None]  # Rescale's one shift, or one per type

    def _modal_wise(self) -> bool:
        return bool(getattr(self.rescale, "use_modal_wise_shift", False))

    def reference_energies(self) -> np.ndarray:
        """The shifts in our element order, float64: one row per fidelity (`modal` order) for
        a model with modality-wise shifts, else one row."""
        shifts = self._shifts()
        if shifts is None:
            return np.zeros((1, len(self.elements)))
        rows = self.modal_index if self._modal_wise() else torch.zeros(1, dtype=torch.long)
        table = shifts.detach().to(torch.float64).cpu()[rows.cpu()]
        return table[:, self.model_index.cpu()].numpy()

    def forward(self, graph, edge_vectors: torch.Tensor, state: torch.Tensor | None) -> torch.Tensor:
        import sevenn._keys as KEY
        from sevenn.nn.linear import AtomReduce
        from sevenn.nn.node_embedding import OnehotEmbedding

        self._no_state(state)
        n, dtype, device = graph.species.shape[0], edge_vectors.dtype, edge_vectors.device
        batch = getattr(graph, "batch", None)
        batch = torch.zeros(n, dtype=torch.long, device=device) if batch is None else batch
        types = self.model_index[graph.species]
        data = {KEY.NODE_FEATURE: types, KEY.EDGE_IDX: graph.edge_index, KEY.EDGE_VEC: edge_vectors, KEY.BATCH: batch}
        modal = None
        if self.modals:
            modal = self.modal_index[graph.fidelity.reshape(-1)]
            data[KEY.MODAL_TYPE] = modal
        with ExitStack() as stack:
            atom_fidelity = graph.fidelity.reshape(-1)[batch] if len(self.fidelity_updates) else None
            radial = any(len(update.radial_updates) for update in self.fidelity_updates)
            edge_fidelity = atom_fidelity[graph.edge_index[0]] if radial else None
            for update in self.fidelity_updates:
                stack.enter_context(update.atoms(atom_fidelity, edge_fidelity))
            for module in self.model:
                if isinstance(module, AtomReduce):  # sevenn sums the energy here; then its own forces
                    break
                data = module(data)
                if isinstance(module, OnehotEmbedding):  # sevenn makes them float32 in any model
                    for key in (module.key_output, module.key_additional_output):
                        if key is not None:
                            data[key] = data[key].to(dtype)
        energy = data[KEY.ATOMIC_ENERGY].reshape(-1)
        shifts = self._shifts()
        if shifts is None:
            return energy
        row = modal[batch] if self._modal_wise() else torch.zeros_like(types)
        return energy - shifts.to(energy.dtype)[row, types]

    def injection_sites(self) -> dict:
        from sevenn.nn.equivariant_gate import EquivariantGate

        modules = list(self.model)
        gates = [k for k, m in enumerate(modules) if isinstance(m, EquivariantGate)]
        embed = self.model._modules.get("onehot_to_feature_x")
        sites = {
            "embedding": [] if embed is None else [InjectionSite(embed, embed.irreps_out, key=embed.key_output)],
            "messages": [InjectionSite(modules[k], modules[k].gate.irreps_out, key=modules[k].key_x) for k in gates],
            "readout": [],
        }
        if gates:
            readout, irreps = modules[gates[-1] + 1], modules[gates[-1]].gate.irreps_out
            sites["readout"] = [InjectionSite(readout, irreps, on_input=True, index=0, key=readout.key_input)]
        return sites

    @staticmethod
    @contextmanager
    def export_context():
        """While a potential is traced for export: sevenn's `message_gather` sizes its output
        with len(node_features), a Python int that fixes the atom count in the trace (and
        torch.export then refuses a dynamic count); an equivalent that keeps the count
        symbolic replaces it, and the original is put back afterwards."""
        from sevenn.nn import convolution

        original = convolution.message_gather
        convolution.message_gather = _gather_messages
        try:
            yield
        finally:
            convolution.message_gather = original

    def extra_repr(self) -> str:
        return super().extra_repr() + (f", modals={self.modals}" if self.modals else "")


def _gather_messages(node_features: torch.Tensor, edge_dst: torch.Tensor, message: torch.Tensor) -> torch.Tensor:
    """Each atom's sum of the messages of its edges (sevenn's message_gather, sized by shape)."""
    out = message.new_zeros((node_features.shape[0], *message.shape[1:]))
    return out.index_add(0, edge_dst, message)


def _rescale_module(model: nn.Module) -> nn.Module | None:
    from sevenn.nn.scale import ModalWiseRescale, Rescale, SpeciesWiseRescale

    found = [m for m in model if isinstance(m, (Rescale, SpeciesWiseRescale, ModalWiseRescale))]
    if len(found) > 1:
        raise ValueError(f"this sevenn model has {len(found)} rescale layers; one is supported")
    return found[0] if found else None


def load_sevenn(
    name: str,
    fidelities: Sequence[str] | None = None,
    modal_map: dict[str, str] | None = None,
    *,
    inject: Sequence[str] | None = None,
    inject_dim: int | None = None,
) -> Potential:
    """A pretrained SevenNet checkpoint shipped in the sevenn wheel as a Potential whose every
    fidelity starts as sevenn predicts it: references = the model's shifts, energy scale 1.

    7net-0 and 7net-l3i5 have no modalities: fidelities default to ["PBE"] (more than one
    gets a FiLM at `inject`, as in `wrap`). 7net-mf-0 defaults to ["r2SCAN", "PBE"] with
    modalities {"r2SCAN": "R2SCAN", "PBE": "PBE"}; `modal_map` adds to or overrides that map
    (our names are free; the value is the sevenn modality). The cutoff is the checkpoint's."""
    if name not in PRETRAINED:
        raise ValueError(f"unknown SevenNet model {name!r}; known: {list(PRETRAINED)}")
    defaults = PRETRAINED[name]
    if defaults is None and modal_map:
        raise ValueError(f"{name} has no modalities; modal_map={modal_map} cannot be used")
    import sevenn._keys as KEY
    from sevenn.util import load_checkpoint

    checkpoint = load_checkpoint(name)  # the file inside the sevenn wheel
    modals = None
    if defaults is None:
        fidelities = list(fidelities or ["PBE"])
    else:  # checked before build_model, which takes seconds
        fidelities = list(fidelities or defaults)
        modal_map = {**defaults, **(modal_map or {})}
        available = list(checkpoint.config[KEY.MODAL_MAP])
        unknown = {f: m for f, m in modal_map.items() if m not in available}
        if unknown:
            raise ValueError(f"unknown sevenn modality in modal_map {unknown}; {name} has {available}")
        missing = [f for f in fidelities if f not in modal_map]
        if missing:
            raise ValueError(f"no modality for fidelities {missing}: give modal_map={{name: one of {available}}}")
        modals = [modal_map[f] for f in fidelities]
    backbone = SevennBackbone(checkpoint.build_model(), modal=modals)  # the e3nn backend (no cuEquivariance / flash)
    backbone.recipe = {
        "checkpoint": name, "fidelities": fidelities, "modal_map": modal_map if defaults is not None else None,
        "inject": None if inject is None else list(inject), "inject_dim": inject_dim, "added": [], "updates": [],
    }  # fmt: skip
    potential = wrap(backbone, fidelities, backbone.elements, inject=inject, inject_dim=inject_dim)
    table = np.broadcast_to(backbone.reference_energies(), (len(fidelities), len(backbone.elements))).copy()
    potential.fidelity_state.set_references(table, 1.0)
    return potential.eval()


@torch.no_grad()
def add_fidelity(potential: Potential, new: str, like: str) -> Potential:
    """Add fidelity `new` to a potential over a multi-modal sevenn model, as a separate copy of
    fidelity `like`: a new sevenn modality whose one-hot columns (in every modal linear layer)
    and shift row are copies of `like`'s modality, and `like`'s references. Predictions at
    `new` equal those at `like` until training changes its columns. Changes the potential in
    place (its model too: copy.deepcopy it first to keep the original) and returns it."""
    backbone = potential.backbone
    if not isinstance(backbone, SevennBackbone) or not backbone.modals:
        raise ValueError("add_fidelity needs a potential over a multi-modal sevenn model (SevennBackbone with modal=...)")
    if potential.injector is not None:
        raise ValueError("add_fidelity does not extend a potential with an injected fidelity (FiLM)")
    base = potential.fidelity_state.index(like)
    if new in potential.fidelities:
        raise ValueError(f"fidelity {new!r} exists already: {potential.fidelities}")
    model = backbone.model
    if new in model.modal_map:
        raise ValueError(f"the sevenn model has a modality named {new!r} already: {list(model.modal_map)}")
    copied = int(backbone.modal_index[base])
    _append_modality(model, copied)
    model.modal_map = {**model.modal_map, new: len(model.modal_map)}
    backbone.modals = backbone.modals + [new]
    backbone.config["modals"] = backbone.modals
    backbone.modal_index = torch.cat([backbone.modal_index, backbone.modal_index.new_tensor([model.modal_map[new]])])
    backbone.n_heads = len(backbone.modals)
    if backbone.recipe is not None:
        backbone.recipe["added"].append([new, like])

    old = potential.fidelity_state
    state = FidelityState(old.fidelities + [new], old.elemental_energies.shape[1], 0).to(old.elemental_energies.device)
    table = torch.cat([old.elemental_energies, old.elemental_energies[base : base + 1]])
    state.set_references(table.cpu().numpy(), float(old.scale))
    potential.fidelity_state = state
    return potential


def rebuild_sevenn(recipe: dict) -> Potential:
    """The potential a recipe (SevennBackbone.recipe) describes, with the checkpoint's weights:
    a saved model's tensors are then loaded into it (serialization.load_potential)."""
    potential = load_sevenn(
        recipe["checkpoint"], recipe["fidelities"], recipe["modal_map"], inject=recipe["inject"], inject_dim=recipe["inject_dim"]
    )
    for new, like in recipe["added"]:
        add_fidelity(potential, new, like=like)
    # [fidelity, rank, radial, self_connections]: files saved before radial or self-connection
    # updates existed list fewer, and their models were trained without them
    for entry in recipe.get("updates", []):
        fidelity, rank, radial, self_connections = [*entry, False, False][:4]
        add_low_rank_update(potential, fidelity, rank, radial=radial, self_connections=self_connections)
    return potential


def add_low_rank_update(
    potential: Potential, fidelity: str, rank: int = 8, radial: bool = False, self_connections: bool = True
) -> nn.Module:
    """Give `fidelity` (of a potential over a sevenn model) its own rank-`rank` update of every
    e3nn linear layer (the skip paths' self-connections unless `self_connections` is False),
    applied only to its atoms (sevenn_low_rank.py), and with `radial` of every radial network,
    on its atoms' edges; it starts at zero, so no prediction changes.
    Returns the update: train its parameters with the model's frozen, and every other
    fidelity keeps its predictions exactly."""
    from .sevenn_low_rank import FidelityLowRank

    backbone = potential.backbone
    if not isinstance(backbone, SevennBackbone):
        raise ValueError("add_low_rank_update needs a potential over a sevenn model (SevennBackbone)")
    index = potential.fidelity_state.index(fidelity)
    if any(u.fidelity == index for u in backbone.fidelity_updates):
        raise ValueError(f"fidelity {fidelity!r} has a low-rank update already")
    with torch.random.fork_rng(devices=[]):  # its random first factor leaves the caller's generator alone
        update = FidelityLowRank(backbone.model, index, rank, radial, self_connections)
    backbone.fidelity_updates.append(update)
    if backbone.recipe is not None:
        backbone.recipe.setdefault("updates", []).append([fidelity, rank, radial, self_connections])
    return update


def _append_modality(model: nn.Module, copied: int) -> None:
    """One more modality in every place sevenn has one, equal to modality `copied`."""
    import sevenn._keys as KEY
    from sevenn.nn.linear import IrrepsLinear
    from sevenn.nn.node_embedding import OnehotEmbedding
    from sevenn.nn.scale import ModalWiseRescale

    for module in model:
        if isinstance(module, OnehotEmbedding) and module.key_x == KEY.MODAL_TYPE:
            module.num_classes += 1
        elif isinstance(module, IrrepsLinear) and module.num_modalities > 1:
            _append_linear_column(module, copied)
        elif isinstance(module, ModalWiseRescale):
            for name, modal_wise in (("shift", module.use_modal_wise_shift), ("scale", module.use_modal_wise_scale)):
                old = getattr(module, name)
                if modal_wise:
                    grown = torch.cat([old, old[copied : copied + 1]])
                    setattr(module, name, nn.Parameter(grown, requires_grad=old.requires_grad))


def _append_linear_column(module: nn.Module, copied: int) -> None:
    """Rebuild the e3nn Linear of a modal IrrepsLinear with one more modality input (sevenn's
    own set_num_modalities / instantiate), keep every output the same: e3nn divides each path
    by sqrt(fan-in), so the old weights are rescaled by the change of path weight, and the
    new modality's rows are the copied modality's."""
    old = module.linear
    n = module.num_modalities
    module.linear, module.layer_instantiated = None, False
    module.set_num_modalities(n + 1)
    with torch.random.fork_rng(devices=[]):  # e3nn draws initial weights, all overwritten below
        module.instantiate()
    new = module.linear.to(device=old.weight.device, dtype=old.weight.dtype)
    last = len(new.irreps_in) - 1  # the modality one-hots are the last input irreps (not simplified into others)
    views = zip(old.weight_views(yield_instruction=True), new.weight_views(yield_instruction=True))
    for (_, old_ins, old_w), (_, new_ins, new_w) in views:
        w = old_w * (old_ins.path_weight / new_ins.path_weight)
        if new_ins.i_in == last:
            w = torch.cat([w, w[w.shape[0] - n + copied][None]])
        new_w.copy_(w)
    if old.bias.numel():
        new.bias.copy_(old.bias)
    new.weight.requires_grad_(old.weight.requires_grad)
    new._forward_hooks.update(old._forward_hooks)  # low-rank updates (sevenn_low_rank.py) hook this layer
    module.linear = new
