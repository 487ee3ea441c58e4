"""Where a model runs. A device name other than cpu, cuda or cuda:N, and CUDA asked for where
there is none, are errors that name what asked (and how this torch was built), never a silent
fall-back to the CPU or torch's own parse error."""

from __future__ import annotations

import torch


def parse_device(name: str, what: str) -> torch.device:
    """`name` as a torch.device; ValueError naming `what` (the option or field that gave it)
    when it is not cpu, cuda or cuda:N or when it asks for CUDA that is not here."""
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError):
        device = None
    if device is None or device.type not in ("cpu", "cuda"):
        raise ValueError(f"{what} {name!r}: give cpu, cuda or cuda:N")
    if device.type == "cuda":
        require_cuda(f"{what} {name}")
    return device


def require_cuda(what: str) -> None:
    """Raise ValueError naming `what` (the option or field that asked for CUDA) unless a CUDA
    device is available."""
    if not torch.cuda.is_available():
        built = f"CUDA {torch.version.cuda}" if torch.version.cuda else "without CUDA"
        raise ValueError(f"{what}: no CUDA device is available here (torch {torch.__version__}, built {built})")
