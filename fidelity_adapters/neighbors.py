"""Periodic neighbour lists (numba) for any cell: triclinic, smaller than the cutoff, mixed
periodic/non-periodic, or no cell at all.

Method: atoms are wrapped into the cell, every periodic image that lies within one cutoff of
the cell (measured perpendicular to each pair of cell faces) is generated, and images are
binned on a Cartesian grid of bin width >= cutoff, so the search costs O(N) for a fixed
density. An edge (i, j, S) means the neighbour of atom i is atom j shifted by S @ cell,
with S an integer vector in the *original* (unwrapped) coordinates.
"""

from __future__ import annotations

import numba
import numpy as np


def _face_distances(cell: np.ndarray) -> np.ndarray:
    """Distance between opposite faces of the cell along each lattice direction."""
    volume = abs(np.linalg.det(cell))
    areas = np.linalg.norm(np.cross(cell[[1, 2, 0]], cell[[2, 0, 1]]), axis=1)
    return volume / areas


@numba.njit(cache=True)
def _image_pass(frac, pbc, reps, pad, atom, shift):
    """Visit every image within pad of the cell; store it when arrays are given, count it."""
    fill = atom.shape[0] > 0
    k = 0
    for a in range(-reps[0], reps[0] + 1):
        for b in range(-reps[1], reps[1] + 1):
            for c in range(-reps[2], reps[2] + 1):
                for j in range(frac.shape[0]):
                    inside = True
                    for d, s in enumerate((a, b, c)):
                        if pbc[d] and (frac[j, d] + s < -pad[d] or frac[j, d] + s > 1.0 + pad[d]):
                            inside = False
                    if inside:
                        if fill:
                            atom[k] = j
                            shift[k, 0] = a
                            shift[k, 1] = b
                            shift[k, 2] = c
                        k += 1
    return k


def _images(frac, pbc, reps, pad):
    """All (atom, shift) images whose fractional coordinates lie within pad of the cell."""
    none = np.empty(0, np.int64)
    count = _image_pass(frac, pbc, reps, pad, none, np.empty((0, 3), np.int64))
    atom, shift = np.empty(count, np.int64), np.empty((count, 3), np.int64)
    _image_pass(frac, pbc, reps, pad, atom, shift)
    return atom, shift


@numba.njit(cache=True)
def _search(centres, image_pos, image_atom, image_shift, offset, cutoff):
    """Edges (i, j, shift) from each centre i to the images closer than cutoff, by Cartesian
    binning of the images, and the index of the shortest edge (-1 if none); shifts are
    returned in unwrapped coordinates (offset: the lattice vector each atom was wrapped by)."""
    m = image_pos.shape[0]
    lo = np.empty(3)
    extent = np.empty(3)
    for d in range(3):
        lo[d] = min(image_pos[:, d].min(), centres[:, d].min()) - 1e-8
        extent[d] = max(image_pos[:, d].max(), centres[:, d].max()) + 1e-8 - lo[d]
    # bins no narrower than the cutoff, and not many more bins than images (sparse systems)
    bin_width = cutoff
    while (int(extent[0] / bin_width) + 1) * (int(extent[1] / bin_width) + 1) * (int(extent[2] / bin_width) + 1) > 8 * m + 64:
        bin_width *= 1.5
    nbins = np.empty(3, np.int64)
    width = np.empty(3)
    for d in range(3):
        nbins[d] = max(1, int(extent[d] / bin_width))
        width[d] = extent[d] / nbins[d]
    total_bins = nbins[0] * nbins[1] * nbins[2]
    bin_of = np.empty(m, np.int64)
    for k in range(m):
        idx = 0
        for d in range(3):
            b = min(int((image_pos[k, d] - lo[d]) / width[d]), nbins[d] - 1)
            idx = idx * nbins[d] + b
        bin_of[k] = idx
    order = np.argsort(bin_of)
    start = np.zeros(total_bins + 1, np.int64)
    for k in range(m):
        start[bin_of[k] + 1] += 1
    for b in range(total_bins):
        start[b + 1] += start[b]

    cutoff2 = cutoff * cutoff
    n = centres.shape[0]
    # sorted copies make the inner loop read memory in order
    sorted_pos = image_pos[order]
    sorted_atom = image_atom[order]
    sorted_shift = image_shift[order]
    capacity = max(1024, 32 * n)  # grown by doubling: no Python-list appends in the hot loop
    out_i = np.empty(capacity, np.int64)
    out_j = np.empty(capacity, np.int64)
    out_shift = np.empty((capacity, 3), np.int64)
    count = 0
    closest, closest_r2 = -1, cutoff2
    home = np.empty(3, np.int64)
    for i in range(n):
        for d in range(3):
            home[d] = min(int((centres[i, d] - lo[d]) / width[d]), nbins[d] - 1)
        x, y, z = centres[i, 0], centres[i, 1], centres[i, 2]
        for a in range(max(0, home[0] - 1), min(nbins[0], home[0] + 2)):
            for b in range(max(0, home[1] - 1), min(nbins[1], home[1] + 2)):
                for c in range(max(0, home[2] - 1), min(nbins[2], home[2] + 2)):
                    bidx = (a * nbins[1] + b) * nbins[2] + c
                    for p in range(start[bidx], start[bidx + 1]):
                        dx = sorted_pos[p, 0] - x
                        dy = sorted_pos[p, 1] - y
                        dz = sorted_pos[p, 2] - z
                        r2 = dx * dx + dy * dy + dz * dz
                        if r2 >= cutoff2:
                            continue
                        j = sorted_atom[p]
                        if j == i and sorted_shift[p, 0] == 0 and sorted_shift[p, 1] == 0 and sorted_shift[p, 2] == 0:
                            continue
                        if count == capacity:
                            capacity *= 2
                            out_i = _grown(out_i, capacity)
                            out_j = _grown(out_j, capacity)
                            out_shift = _grown(out_shift, capacity)
                        if r2 < closest_r2:
                            closest, closest_r2 = count, r2
                        out_i[count] = i
                        out_j[count] = j
                        for d in range(3):
                            out_shift[count, d] = sorted_shift[p, d] - offset[j, d] + offset[i, d]
                        count += 1
    return out_i[:count].copy(), out_j[:count].copy(), out_shift[:count].copy(), closest


@numba.njit(cache=True)
def _grown(array, capacity):
    bigger = np.empty((capacity,) + array.shape[1:], array.dtype)
    bigger[: array.shape[0]] = array
    return bigger


def neighbor_list(
    positions: np.ndarray, cell: np.ndarray, pbc: np.ndarray, cutoff: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Return (i, j, shifts): directed pairs with |pos[j] + shifts @ cell - pos[i]| < cutoff.

    Both directions of each pair are listed. Directions without periodicity need no cell
    vector (a zero cell is fine for a molecule).
    """
    return neighbor_list_and_closest(positions, cell, pbc, cutoff)[:3]


def average_neighbors(structures, cutoff: float) -> float:
    """Mean number of neighbours within `cutoff` per atom over the structures: the message
    normalisation of the e3nn backbones, computed from the training data as MACE and nequip do."""
    pairs = atoms = 0
    for s in structures:
        pairs += len(neighbor_list(s.positions, s.cell, s.pbc, cutoff)[0])
        atoms += len(s.numbers)
    if not atoms:
        raise ValueError("no structures to count neighbours in")
    return pairs / atoms


def neighbor_list_and_closest(
    positions: np.ndarray, cell: np.ndarray, pbc: np.ndarray, cutoff: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """neighbor_list() and the index of its shortest edge (-1 if it has none): a graph
    builder checks for overlapping atoms with it instead of a second neighbour list."""
    positions = np.ascontiguousarray(positions, dtype=np.float64)
    pbc = np.asarray(pbc, dtype=bool)
    cell = np.asarray(cell, dtype=np.float64)
    n = len(positions)
    empty = np.empty(0, np.int64)
    if n == 0:
        return empty, empty, np.empty((0, 3), np.int64), -1
    if pbc.any():
        if not pbc.all():
            cell = _complete_cell(cell, pbc, positions)
        elif abs(np.linalg.det(cell)) < 1e-9:
            raise ValueError("periodic cell has zero volume")
        pad = cutoff / _face_distances(cell)
        _check_density(n, cell, pbc, pad, cutoff)
        frac = np.linalg.solve(cell.T, positions.T).T
        offset = np.where(pbc, np.floor(frac), 0.0).astype(np.int64)
        frac = frac - offset
        reps = np.where(pbc, np.ceil(pad), 0).astype(np.int64)
        image_atom, image_shift = _images(frac, pbc, reps, np.where(pbc, pad, 0.0))
        wrapped = frac @ cell
        image_pos = wrapped[image_atom] + image_shift @ cell
        return _search(wrapped, image_pos, image_atom, image_shift, offset, cutoff)
    zero = np.zeros((n, 3), np.int64)
    return _search(positions, positions, np.arange(n, dtype=np.int64), zero, zero, cutoff)


MAX_NEIGHBOURS_PER_ATOM = 5000  # dense solids at a 10 A cutoff have about 400
MAX_IMAGES = 20_000_000


def _check_density(n: int, cell: np.ndarray, pbc: np.ndarray, pad: np.ndarray, cutoff: float) -> None:
    """Refuse a cell so thin (nearly singular) that the search would take minutes and GiB,
    before searching: its periodic images would crowd every cutoff sphere."""
    volume = abs(np.linalg.det(cell))
    images = n * np.prod(np.where(pbc, 2 * np.ceil(pad) + 1, 1.0))
    per_atom = n / volume * 4.0 / 3.0 * np.pi * cutoff**3 if pbc.all() else 0.0
    if images > MAX_IMAGES or per_atom > MAX_NEIGHBOURS_PER_ATOM:
        heights = np.round(cutoff / pad, 6).tolist()
        raise ValueError(
            f"cell too thin for a {cutoff} A cutoff: face distances {heights} A give about {per_atom:.3g} "
            f"neighbours per atom and {images:.3g} periodic images; is the cell nearly singular?"
        )


def _complete_cell(cell: np.ndarray, pbc: np.ndarray, positions: np.ndarray) -> np.ndarray:
    """Replace the vectors of non-periodic directions by orthogonal ones spanning the atoms,
    so the cell is invertible; those directions are never replicated, so length is free."""
    periodic = cell[pbc]
    if np.linalg.matrix_rank(periodic, tol=1e-9) < len(periodic):
        raise ValueError("periodic cell vectors are linearly dependent (zero cell volume)")
    cell = cell.copy()
    _, _, vt = np.linalg.svd(np.vstack([periodic, np.zeros((3 - len(periodic), 3))]))
    span = np.ptp(positions, axis=0).max() + 1.0
    for d, normal in zip(np.flatnonzero(~pbc), vt[len(periodic):]):
        cell[d] = normal * span
    return cell
