"""Saving and loading potentials without unpickling code, and atomic file writes.

A saved potential is one safetensors file: the weights and buffers (elemental reference
energies and scale included) plus JSON metadata naming the backbone class, its constructor
arguments, the elements, the fidelities, the fidelities' own low-rank updates (their ranks)
and, for a backbone without a global state, where and how wide the fidelity is injected. Loading rebuilds the model from that metadata, so the
fidelity names and the fidelity input travel with the model. A wrapped third-party model is
described by its library, the library's version, the model's class or builder and its
constructor config in plain JSON (third_party/base.py), a SevenNet one by the recipe that
loads it from the sevenn wheel; both are rebuilt with the installed library.

A model file is checked before it is used: SHA-256 digests of its tensors and of its metadata
(written beside them) must match, so flipped bytes or edited metadata are an error instead of
nonsense predictions, and the metadata's numbers must be in sane ranges before anything is
built from them (a hand-made file with huge sizes must not exhaust memory).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
import warnings
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from backbones import BACKBONES

from .low_rank import has_low_rank_updates, merged_state_dict
from .potential import Potential, wrap
from .third_party import rebuild_backbone
from .third_party.base import installed_version, require_library

FORMAT_VERSION = 2  # 2: SHA-256 digests of tensors and metadata; 1 (no digests) still loads, with a warning
DIGESTS_KEY = "fidelity_adapters_sha256"
MAX_CUTOFF = 15.0  # Angstrom
MAX_SIZE = 4096  # any width, count of blocks, basis functions, heads in a backbone's config
CUTOFFS = ("cutoff", "three_body_cutoff", "r_max")  # keys of cutoffs in backbone configs (r_max: mace's and nequip's name)
NOT_SIZES = ("seed",)  # integers in backbone configs that are not sizes: a random seed may be any number


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


SEVENN = "SevennBackbone"  # saved as the recipe that rebuilds it from the sevenn wheel's checkpoint
THIRD_PARTY = {"MaceBackbone": "mace", "NequipBackbone": "nequip"}  # saved as ThirdPartyBackbone.saved_config


def metadata_of(potential: Potential) -> dict:
    backbone = potential.backbone
    name = type(backbone).__name__
    if name == SEVENN:
        if backbone.recipe is None:
            raise ValueError("a SevenNet backbone made outside load_sevenn has no recipe to rebuild it from and cannot be saved")
        config = {"sevenn": backbone.recipe, "library": "sevenn", "version": installed_version("sevenn")}
    elif name in THIRD_PARTY:
        config = backbone.saved_config()
    elif name in BACKBONES:
        config = backbone.config
    else:
        raise ValueError(f"backbone {name} is not in backbones.BACKBONES and cannot be saved by name")
    return {
        "format_version": FORMAT_VERSION,
        "backbone": name,
        "backbone_config": config,
        "elements": potential.elements,
        "fidelities": potential.fidelities,
        "dtype": str(potential.dtype).removeprefix("torch."),
        "injection": None if potential.injector is None else {"places": potential.injector.places, "dim": potential.injector.dim},
        "low_rank": [[potential.fidelities[u.fidelity], u.rank] for u in potential.fidelity_low_rank],  # fidelity, rank
    }


def tensors_digest(tensors: dict[str, torch.Tensor]) -> str:
    """SHA-256 over names, dtypes, shapes and bytes of all tensors, in name order."""
    digest = hashlib.sha256()
    for name in sorted(tensors):
        tensor = tensors[name].detach().cpu().contiguous()
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def save_potential(potential: Potential, path: str | os.PathLike, extra: dict | None = None) -> None:
    text = json.dumps({**metadata_of(potential), **({"extra": extra} if extra else {})})
    # low-rank updates are saved merged into plain weights (W + B A), which the model's config rebuilds
    state = merged_state_dict(potential) if has_low_rank_updates(potential) else potential.state_dict()
    tensors = {k: v.detach().cpu().contiguous() for k, v in state.items()}
    digests = {"tensors": tensors_digest(tensors), "metadata": hashlib.sha256(text.encode()).hexdigest()}
    meta = {"fidelity_adapters": text, DIGESTS_KEY: json.dumps(digests)}
    atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata=meta))


def _read_header(path: Path) -> tuple[dict, dict | None]:
    """(metadata, digests or None for a format-1 file); the metadata's digest is verified."""
    from safetensors import safe_open

    if not path.exists():
        raise FileNotFoundError(f"model file not found: {path}")
    try:
        with safe_open(str(path), framework="pt") as handle:
            header = handle.metadata() or {}
        text = header["fidelity_adapters"]
        meta = json.loads(text)
        digests = json.loads(header[DIGESTS_KEY]) if DIGESTS_KEY in header else None
    except (SafetensorError, KeyError, json.JSONDecodeError, OSError, ValueError) as error:
        raise ValueError(f"{path}: not a readable fidelity-adapters model file ({error})") from None
    if digests is not None and hashlib.sha256(text.encode()).hexdigest() != digests.get("metadata"):
        raise ValueError(f"{path}: the metadata does not match its SHA-256 digest: the file was edited or damaged after it was saved")
    return meta, digests


def read_metadata(path: str | os.PathLike) -> dict:
    return _read_header(Path(path))[0]


def check_metadata(meta: dict, path) -> None:
    """Sane values before a model is built from them: known backbone, elements, unique
    fidelity names, every cutoff in (0, MAX_CUTOFF], every integer size in [0, MAX_SIZE]."""
    known = [*BACKBONES, SEVENN, *THIRD_PARTY]
    if meta.get("backbone") not in known:
        raise ValueError(f"{path}: unknown backbone {meta.get('backbone')!r}; known: {known}")
    elements, fidelities = meta.get("elements"), meta.get("fidelities")
    if not elements or not all(isinstance(z, int) and 1 <= z <= 118 for z in elements):
        raise ValueError(f"{path}: elements {elements} are not atomic numbers")
    if not fidelities or len(set(fidelities)) != len(fidelities) or not all(isinstance(f, str) and f for f in fidelities):
        raise ValueError(f"{path}: fidelities {fidelities} must be unique, non-empty names")
    low_rank = meta.get("low_rank", [])
    if not isinstance(low_rank, list) or not all(
        isinstance(u, list) and len(u) == 2 and u[0] in fidelities and isinstance(u[1], int) and 1 <= u[1] <= MAX_SIZE for u in low_rank
    ):
        raise ValueError(f"{path}: low_rank {low_rank} must list [fidelity, rank] pairs of known fidelities and ranks in [1, {MAX_SIZE}]")
    config = meta.get("backbone_config", {})
    if meta["backbone"] in THIRD_PARTY:
        _check_third_party(config, THIRD_PARTY[meta["backbone"]], path)
    _check_numbers(config, path, "backbone_config")


def _check_third_party(config: dict, library: str, path) -> None:
    """The fields ThirdPartyBackbone.saved_config writes, of the right kinds, for the right library."""
    if config.get("library") != library:
        raise ValueError(f"{path}: backbone_config.library is {config.get('library')!r}, not {library!r}")
    for key, kind in (("version", str), ("model", str), ("config", dict), ("options", dict)):
        if not isinstance(config.get(key), kind):
            raise ValueError(f"{path}: backbone_config.{key} is missing or not a {kind.__name__}")


def _check_numbers(value, path, key: str) -> None:
    """Cutoffs in (0, MAX_CUTOFF] and integers in [0, MAX_SIZE] at any depth: a third-party
    model's constructor config nests its sizes in lists and dicts (and mace's irreps strings
    hold multiplicities and l's), and a size there allocates as much as one at the top."""
    name = key.rpartition(".")[2]
    if isinstance(value, dict):
        for k, v in value.items():
            _check_numbers(v, path, f"{key}.{k}")
    elif isinstance(value, list):
        for v in value:
            _check_numbers(v, path, key)
    elif name in NOT_SIZES:
        return
    elif name in CUTOFFS:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value <= MAX_CUTOFF:
            raise ValueError(f"{path}: {key} {value} A is outside (0, {MAX_CUTOFF}]")
    elif isinstance(value, int) and not isinstance(value, bool) and not 0 <= value <= MAX_SIZE:
        raise ValueError(f"{path}: {key} = {value} is outside [0, {MAX_SIZE}]")
    elif name == "irreps" and isinstance(value, str) and any(int(n) > MAX_SIZE for n in re.findall(r"\d+", value)):
        raise ValueError(f"{path}: {key} {value!r} has a multiplicity or l outside [0, {MAX_SIZE}]")


def load_potential(path: str | os.PathLike, device: str | torch.device = "cpu") -> Potential:
    meta, digests = _read_header(Path(path))
    if meta.get("format_version") not in (1, FORMAT_VERSION):
        raise ValueError(f"{path}: model format version {meta.get('format_version')} is not {FORMAT_VERSION}")
    if digests is None:
        warnings.warn(f"{path}: saved without SHA-256 digests (format 1); its weights cannot be verified. Save it again to add them.")
    check_metadata(meta, path)
    dtype = getattr(torch, meta["dtype"])
    config = meta["backbone_config"]
    if meta["backbone"] == SEVENN:
        require_library("sevenn", config.get("version"), path)  # files saved before versions were recorded have none
        from .third_party.sevenn import rebuild_sevenn

        potential = rebuild_sevenn(config["sevenn"]).to(dtype)
    else:
        injection = meta.get("injection")
        options = {"inject": injection["places"], "inject_dim": injection["dim"]} if injection else {}
        if meta["backbone"] in THIRD_PARTY:
            backbone = rebuild_backbone(config, dtype, path).to(dtype)
        else:
            backbone = BACKBONES[meta["backbone"]](**config).to(dtype)
        # every tensor in the saved dtype, so float64 weights are not rounded through float32 ones
        potential = wrap(backbone, meta["fidelities"], meta["elements"], **options).to(dtype)
    if potential.fidelities != meta["fidelities"]:
        raise ValueError(f"{path}: rebuilt with fidelities {potential.fidelities}, but the file names {meta['fidelities']}")
    for fidelity, rank in meta.get("low_rank", []):  # absent in files saved before these updates existed
        potential.add_low_rank_update(fidelity, rank)
    try:
        tensors = load_file(str(path))
    except (SafetensorError, OSError) as error:
        raise ValueError(f"{path}: model weights are unreadable ({error})") from None
    if meta["format_version"] == 1:  # saved before reference spans were recorded: valid everywhere, as then
        tensors.setdefault("fidelity_state.reference_span", potential.fidelity_state.reference_span.cpu())
    if digests is not None and tensors_digest(tensors) != digests.get("tensors"):
        raise ValueError(f"{path}: the weights do not match their SHA-256 digest: the file was changed or damaged after it was saved")
    expected = {k: tuple(v.shape) for k, v in potential.state_dict().items()}
    found = {k: tuple(v.shape) for k, v in tensors.items()}
    if expected != found:
        differing = sorted(k for k in expected.keys() | found.keys() if expected.get(k) != found.get(k))
        raise ValueError(f"{path}: the weights do not fit the model its metadata describes: {differing[:5]} "
                         f"(expected {[expected.get(k) for k in differing[:5]]}, found {[found.get(k) for k in differing[:5]]})")  # fmt: skip
    potential.load_state_dict(tensors, strict=True)
    return potential.to(device)
