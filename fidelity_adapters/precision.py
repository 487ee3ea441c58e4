"""Numerical precision of a run: the network's dtype, and TF32 for its float32 matmuls on CUDA.

float32 (the default) and float64 are the network's dtype; `tf32` keeps float32 weights and
lets CUDA tensor cores round each matmul's inputs to 10 mantissa bits. Whatever the choice,
the geometry (edge vectors, strain) is computed without matmuls (potential.rows_times) and
the references and energy sums stay float64, so only the network's arithmetic changes.

bf16 is not offered: measured against float64 on liquid water (docs/precision.md), bf16
autocast of the network moves forces by 13 meV/A on average and up to 0.1 eV/A, and energies
by 2 meV/atom; TF32 by 1.4 and 11 meV/A and 0.5 meV/atom.

`emulated_tf32()` rounds matmul inputs the way TF32 does, so that its effect on a model can
be measured (and tested) on a machine without a GPU.
"""

from __future__ import annotations

from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

PRECISIONS = ("float32", "float64", "tf32")


def network_dtype(precision: str) -> torch.dtype:
    check_precision(precision)
    return torch.float64 if precision == "float64" else torch.float32


def check_precision(precision: str, device: torch.device | str | None = None) -> None:
    """An unknown precision, or TF32 where it would do nothing (CPU, GPUs before Ampere), is an error."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision {precision!r}: give one of {', '.join(PRECISIONS)}")
    if precision != "tf32" or device is None:
        return
    device = torch.device(device)
    if device.type != "cuda":
        raise ValueError("precision tf32 is a CUDA tensor-core mode; on the CPU float32 matmuls stay float32, "
                         "so it would change nothing: give --device cuda, or float32 / float64")  # fmt: skip
    major, minor = torch.cuda.get_device_capability(device)
    if major < 8:
        raise ValueError(f"precision tf32 needs an Ampere or newer GPU (compute capability 8.0); "
                         f"{torch.cuda.get_device_name(device)} has {major}.{minor}, where it would change nothing")  # fmt: skip


@contextmanager
def matmul_precision(precision: str, device: torch.device | str):
    """Within the block, float32 matmuls on CUDA use TF32 if `precision` is tf32 (checked
    first); the previous setting comes back afterwards."""
    check_precision(precision, device)
    if precision != "tf32":
        yield
        return
    saved = torch.backends.cuda.matmul.fp32_precision
    torch.backends.cuda.matmul.fp32_precision = "tf32"
    try:
        yield
    finally:
        torch.backends.cuda.matmul.fp32_precision = saved


def round_to_tf32(tensor):
    """A float32 tensor rounded to TF32's 10 mantissa bits (to nearest); the gradient passes
    through unchanged. Anything else is returned as it is."""
    if not isinstance(tensor, torch.Tensor) or tensor.dtype != torch.float32:
        return tensor
    bits = tensor.detach().contiguous().view(torch.int32)
    rounded = ((bits + 0x1000) & ~0x1FFF).view(torch.float32)
    return tensor + (rounded - tensor.detach())


_MATMULS = {F.linear, torch.matmul, torch.mm, torch.bmm, torch.addmm, torch.baddbmm, torch.Tensor.matmul,
            torch.Tensor.__matmul__, torch.Tensor.mm, torch.Tensor.bmm, torch.einsum}  # fmt: skip


class _EmulatedTF32(TorchFunctionMode):
    def __torch_function__(self, func, types, args=(), kwargs=None):
        if func in _MATMULS:
            args = (args[0], *map(round_to_tf32, args[1:])) if func is torch.einsum else tuple(map(round_to_tf32, args))
            kwargs = {k: round_to_tf32(v) for k, v in (kwargs or {}).items()}
        return func(*args, **(kwargs or {}))


def emulated_tf32() -> TorchFunctionMode:
    """Within `with emulated_tf32():`, the float32 inputs of matmuls, linear layers and einsums
    are rounded as CUDA's TF32 mode rounds them (accumulation stays float32, as on tensor
    cores), on any device. Slower than plain float32; for measuring, not for running."""
    return _EmulatedTF32()
