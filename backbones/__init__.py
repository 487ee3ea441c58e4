"""Backbones: message-passing networks that map a graph (+ optional global state) to
per-atom energies. A backbone has `cutoff`, `state_dim` (0: no state input), `config`
(its constructor arguments, for saving) and may have `augment_graph(graph)` to add indices
it needs at graph-building time, `node_features(...)` (invariant atom features that describe
structures) and `injection_sites()` (where a fidelity vector can enter a backbone without a
state, see fidelity_adapters/injection.py)."""

import torch

if hasattr(torch.serialization, "add_safe_globals"):
    # e3nn 0.4.4 (pinned by mace-torch) reads its constants.pt with torch.load, whose weights-only
    # default (torch >= 2.6) refuses the slice objects in it: allow exactly that type, before e3nn loads
    torch.serialization.add_safe_globals([slice])

from .m3gnet import M3GNet  # noqa: E402
from .mace_style import MACEStyle  # noqa: E402
from .nequip_style import NequIPStyle  # noqa: E402

BACKBONES = {"M3GNet": M3GNet, "MACEStyle": MACEStyle, "NequIPStyle": NequIPStyle}

__all__ = ["BACKBONES", "M3GNet", "MACEStyle", "NequIPStyle"]
