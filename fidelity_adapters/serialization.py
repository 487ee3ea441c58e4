"""Saving and loading potentials without unpickling code, and atomic file writes.

A saved potential is one safetensors file: the weights and buffers (elemental reference
energies and scale included) plus JSON metadata naming the backbone class, its constructor
arguments, the elements, the fidelities and, for a backbone without a global state, where
and how wide the fidelity is injected. Loading rebuilds the model from that metadata, so the
fidelity names and the fidelity input travel with the model.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from backbones import BACKBONES

from .potential import Potential, wrap

FORMAT_VERSION = 1


def atomic_write(path: str | os.PathLike, write) -> None:
    """Call write(tmp_path), fsync, then rename over path: a crash leaves the old file intact."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    umask = os.umask(0)
    os.umask(umask)
    try:
        write(tmp)
        # mkstemp makes owner-only files, and some writers (safetensors) replace the file: set the
        # usual permissions on what was written
        os.chmod(tmp, 0o666 & ~umask)
        with open(tmp, "rb") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def metadata_of(potential: Potential) -> dict:
    backbone = potential.backbone
    name = type(backbone).__name__
    if name not in BACKBONES:
        raise ValueError(f"backbone {name} is not in backbones.BACKBONES and cannot be saved by name")
    return {
        "format_version": FORMAT_VERSION,
        "backbone": name,
        "backbone_config": backbone.config,
        "elements": potential.elements,
        "fidelities": potential.fidelities,
        "dtype": str(potential.dtype).removeprefix("torch."),
        "injection": None if potential.injector is None else {"places": potential.injector.places, "dim": potential.injector.dim},
    }


def save_potential(potential: Potential, path: str | os.PathLike, extra: dict | None = None) -> None:
    meta = {"fidelity_adapters": json.dumps({**metadata_of(potential), **({"extra": extra} if extra else {})})}
    tensors = {k: v.detach().cpu().contiguous() for k, v in potential.state_dict().items()}
    atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata=meta))


def read_metadata(path: str | os.PathLike) -> dict:
    from safetensors import safe_open

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"model file not found: {path}")
    try:
        with safe_open(str(path), framework="pt") as handle:
            meta = handle.metadata() or {}
        return json.loads(meta["fidelity_adapters"])
    except (SafetensorError, KeyError, json.JSONDecodeError, OSError, ValueError) as error:
        raise ValueError(f"{path}: not a readable fidelity-adapters model file ({error})") from None


def load_potential(path: str | os.PathLike, device: str | torch.device = "cpu") -> Potential:
    meta = read_metadata(path)
    if meta.get("format_version") != FORMAT_VERSION:
        raise ValueError(f"{path}: model format version {meta.get('format_version')} is not {FORMAT_VERSION}")
    dtype = getattr(torch, meta["dtype"])
    injection = meta.get("injection")
    options = {"inject": injection["places"], "inject_dim": injection["dim"]} if injection else {}
    backbone = BACKBONES[meta["backbone"]](**meta["backbone_config"]).to(dtype)
    # every tensor in the saved dtype, so float64 weights are not rounded through float32 ones
    potential = wrap(backbone, meta["fidelities"], meta["elements"], **options).to(dtype)
    try:
        tensors = load_file(str(path))
    except (SafetensorError, OSError) as error:
        raise ValueError(f"{path}: model weights are unreadable ({error})") from None
    potential.load_state_dict(tensors, strict=True)
    return potential.to(device)
