"""Backbones: message-passing networks that map a graph (+ optional global state) to
per-atom energies. A backbone has `cutoff`, `state_dim` (0: no state input), `config`
(its constructor arguments, for saving) and may have `augment_graph(graph)` to add indices
it needs at graph-building time."""

from .m3gnet import M3GNet

BACKBONES = {"M3GNet": M3GNet}

__all__ = ["BACKBONES", "M3GNet"]
