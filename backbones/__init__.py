"""Backbones: message-passing networks that map a graph (+ optional global state) to
per-atom energies. A backbone has `cutoff`, `state_dim` (0: no state input), `config`
(its constructor arguments, for saving) and may have `augment_graph(graph)` to add indices
it needs at graph-building time, `node_features(...)` (invariant atom features that describe
structures) and `injection_sites()` (where a fidelity vector can enter a backbone without a
state, see fidelity_adapters/injection.py)."""

from .m3gnet import M3GNet
from .mace_style import MACEStyle
from .nequip_style import NequIPStyle

BACKBONES = {"M3GNet": M3GNet, "MACEStyle": MACEStyle, "NequIPStyle": NequIPStyle}

__all__ = ["BACKBONES", "M3GNet", "MACEStyle", "NequIPStyle"]
