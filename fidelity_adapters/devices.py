"""Where a model runs. CUDA asked for where there is none is an error that names what asked
and how this torch was built, never a silent fall-back to the CPU."""

from __future__ import annotations

import torch


def require_cuda(what: str) -> None:
    """Raise ValueError naming `what` (the option or field that asked for CUDA) unless a CUDA
    device is available."""
    if not torch.cuda.is_available():
        built = f"CUDA {torch.version.cuda}" if torch.version.cuda else "without CUDA"
        raise ValueError(f"{what}: no CUDA device is available here (torch {torch.__version__}, built {built})")
