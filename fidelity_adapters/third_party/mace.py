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
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from backbones.injection_sites import InjectionSite

from .base import ThirdPartyBackbone


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
        self.config["head"] = heads[self.head]
        self._in_call = False
        model.atomic_energies_fn.register_forward_hook(_ZeroE0(self))

    def reference_energies(self) -> np.ndarray:
        e0 = torch.atleast_2d(self.model.atomic_energies_fn.atomic_energies.detach())[self.head]
        return e0.to(torch.float64).cpu().numpy()[self.model_index.cpu().numpy()]

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


class _ZeroE0:
    """Forward hook on atomic_energies_fn: zeros inside MaceBackbone's calls (the E0s live in
    our references), the model's own E0 otherwise, so the model called directly is unchanged.
    A class, not a closure, so that a deep copy of the potential hooks the copied backbone."""

    def __init__(self, backbone: MaceBackbone):
        self.backbone = backbone

    def __call__(self, module, args, output):
        return torch.zeros_like(output) if self.backbone._in_call else output
