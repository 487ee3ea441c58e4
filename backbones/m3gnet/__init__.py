"""Native M3GNet backbone (numba triplets, torch_geometric scatter)."""

from .model import M3GNet

__all__ = ["M3GNet"]
