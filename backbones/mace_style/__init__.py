"""MACE-style e3nn backbone: higher body order from symmetric products of equivariant messages."""

from .model import MACEStyle

__all__ = ["MACEStyle"]
