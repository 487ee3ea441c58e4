"""Structure analysis of MD frames: radial and angular distributions and coordination numbers.

These are the structural checks used to compare fidelities (Ko & Ong): the O-O RDF and O-O-O
angle distribution of liquid water, and Si coordination numbers with a 2.85 A cutoff. Pairs
come from the library's periodic neighbour list, so cells smaller than the cutoff and
triclinic cells are handled.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from ase import Atoms
from ase.io import read
from matplotlib.figure import Figure

from ..neighbors import neighbor_list

Frames = Sequence[Atoms] | Atoms | str | Path


def _frames(frames: Frames) -> list[Atoms]:
    """A list of Atoms from a list, a single Atoms or a trajectory path."""
    if isinstance(frames, Atoms):
        return [frames]
    if isinstance(frames, (str, Path)):
        return read(frames, index=":")
    return list(frames)


def _pairs(atoms: Atoms, cutoff: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Directed pairs (i, j) within cutoff and the vectors from atom i to its neighbour j."""
    i, j, shifts = neighbor_list(atoms.positions, atoms.cell.array, atoms.pbc, cutoff)
    vectors = atoms.positions[j] + shifts @ atoms.cell.array - atoms.positions[i]
    return i, j, vectors


def _mask(atoms: Atoms, element: str | None) -> np.ndarray:
    """Which atoms are of `element` (all when None)."""
    symbols = np.array(atoms.get_chemical_symbols())
    return np.ones(len(atoms), bool) if element is None else symbols == element


def radial_distribution(
    frames: Frames, rmax: float = 6.0, nbins: int = 200, elements: tuple[str, str] | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Return (r bin centres, g(r)) averaged over fully periodic frames.

    With `elements=(A, B)` this is the partial g_AB: B neighbours around A centres, normalised
    by the density of B. Normalisation is by N/V, so g -> 1 for an ideal gas.
    """
    edges = np.linspace(0.0, rmax, nbins + 1)
    shells = 4.0 / 3.0 * np.pi * np.diff(edges**3)
    centre_element, neighbour_element = elements if elements is not None else (None, None)
    curves = []
    for atoms in _frames(frames):
        if not atoms.pbc.all():
            raise ValueError("g(r) needs a fully periodic cell (a volume)")
        centres, neighbours = _mask(atoms, centre_element), _mask(atoms, neighbour_element)
        if not centres.any() or not neighbours.any():
            continue
        i, j, vectors = _pairs(atoms, rmax)
        keep = centres[i] & neighbours[j]
        counts, _ = np.histogram(np.linalg.norm(vectors[keep], axis=1), bins=edges)
        density = neighbours.sum() / atoms.cell.volume
        curves.append(counts / (centres.sum() * density * shells))
    if not curves:
        raise ValueError(f"no frame contains the elements {elements}")
    return 0.5 * (edges[1:] + edges[:-1]), np.mean(curves, axis=0)


def angular_distribution(
    frames: Frames, center: str = "O", neighbor: str = "O", cutoff: float = 3.3, nbins: int = 180
) -> tuple[np.ndarray, np.ndarray]:
    """Return (angle bin centres in degrees, probability density per degree).

    Angles are neighbor-center-neighbor for every pair of `neighbor` atoms within `cutoff`
    of a `center` atom, pooled over frames; the density integrates to 1 over 0-180 degrees.
    """
    angles = []
    for atoms in _frames(frames):
        i, j, vectors = _pairs(atoms, cutoff)
        keep = _mask(atoms, center)[i] & _mask(atoms, neighbor)[j]
        i, vectors = i[keep], vectors[keep]
        order = np.argsort(i, kind="stable")
        units = vectors[order] / np.linalg.norm(vectors[order], axis=1, keepdims=True)
        for group in np.split(units, np.flatnonzero(np.diff(i[order])) + 1):
            a, b = np.triu_indices(len(group), k=1)
            cosines = np.clip(np.einsum("ij,ij->i", group[a], group[b]), -1.0, 1.0)
            angles.append(np.degrees(np.arccos(cosines)))
    angles = np.concatenate(angles) if angles else np.empty(0)
    if len(angles) == 0:
        raise ValueError(f"no {neighbor}-{center}-{neighbor} triplets within {cutoff} A")
    density, edges = np.histogram(angles, bins=nbins, range=(0.0, 180.0), density=True)
    return 0.5 * (edges[1:] + edges[:-1]), density


def coordination_numbers(
    frames: Frames, cutoff: float = 2.85, element: str | None = None, neighbor: str | None = None
) -> dict[int, float]:
    """Fraction of atoms (of `element` if given) with each number of neighbours (of `neighbor`
    if given) within cutoff."""
    numbers = []
    for atoms in _frames(frames):
        i, j, _ = _pairs(atoms, cutoff)
        counted = _mask(atoms, neighbor)[j]
        numbers.append(np.bincount(i[counted], minlength=len(atoms))[_mask(atoms, element)])
    numbers = np.concatenate(numbers) if numbers else np.empty(0, int)
    if len(numbers) == 0:
        raise ValueError(f"no atoms of element {element!r} in the frames")
    values, counts = np.unique(numbers, return_counts=True)
    return {int(v): float(c) / len(numbers) for v, c in zip(values, counts)}


def _save(figure: Figure, path: str | Path) -> Path:
    """Write a figure as PNG and return its path."""
    path = Path(path)
    figure.tight_layout()
    figure.savefig(path, format="png", dpi=120)
    return path


def plot_rdf(r: np.ndarray, g: np.ndarray, path: str | Path, label: str | None = None) -> Path:
    """Plot g(r) to a PNG."""
    figure = Figure(figsize=(5, 3.5))
    ax = figure.add_subplot()
    ax.plot(r, g, label=label)
    ax.axhline(1.0, color="grey", lw=0.8, ls="--")
    ax.set(xlabel="r (Å)", ylabel="g(r)", xlim=(0, r[-1] + (r[1] - r[0]) / 2))
    if label is not None:
        ax.legend()
    return _save(figure, path)


def plot_angles(theta: np.ndarray, p: np.ndarray, path: str | Path, label: str | None = None) -> Path:
    """Plot an angular distribution to a PNG."""
    figure = Figure(figsize=(5, 3.5))
    ax = figure.add_subplot()
    ax.plot(theta, p, label=label)
    ax.set(xlabel="angle (degrees)", ylabel="probability density (1/degree)", xlim=(0, 180))
    if label is not None:
        ax.legend()
    return _save(figure, path)


def plot_coordination(histogram: dict[int, float], path: str | Path) -> Path:
    """Bar chart of coordination-number fractions to a PNG."""
    figure = Figure(figsize=(5, 3.5))
    ax = figure.add_subplot()
    numbers = sorted(histogram)
    ax.bar(numbers, [histogram[n] for n in numbers])
    ax.set(xlabel="coordination number", ylabel="fraction of atoms", xticks=numbers)
    return _save(figure, path)
