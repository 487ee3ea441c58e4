"""NequIP-style e3nn backbone: gated equivariant interaction blocks, invariant readout."""

from .model import NequIPStyle

__all__ = ["NequIPStyle"]
