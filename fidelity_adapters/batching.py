"""Batches limited by atoms as well as by structures, because memory grows with the atoms of
a batch: 16 frames of 192 waters took SevenNet-MF-0 past 16 GB with forces, and a training
batch of up to eight 864-atom water frames took our M3GNet past 14 GB."""

from __future__ import annotations

from typing import Sequence, TypeVar

Item = TypeVar("Item")


def atom_limited(items: Sequence[Item], sizes: Sequence[int], batch_size: int, max_atoms: int | None) -> list[list[Item]]:
    """`items`, in order, in consecutive groups of at most `batch_size` of them and `max_atoms`
    atoms together (`sizes[k]`: the atoms of items[k]; None: no atom limit); an item with more
    atoms than max_atoms makes a group of its own."""
    if batch_size < 1 or (max_atoms is not None and max_atoms < 1):
        raise ValueError(f"batch_size and max_atoms must be >= 1, not {batch_size} and {max_atoms}")
    groups: list[list[Item]] = []
    atoms = 0
    for item, size in zip(items, sizes, strict=True):
        full = groups and (len(groups[-1]) == batch_size or (max_atoms is not None and atoms + size > max_atoms))
        if not groups or full:
            groups.append([])
            atoms = 0
        groups[-1].append(item)
        atoms += size
    return groups
