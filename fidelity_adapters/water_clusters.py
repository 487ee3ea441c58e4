"""Geometries of small water clusters from short classical TIP3P molecular dynamics.

The bundled multi-fidelity data set needs geometries that look like what a potential
meets in MD (thermal, not only minima) and that cost little to make. Rigid TIP3P MD gives
realistic intermolecular arrangements; a small Gaussian rattle afterwards moves the
intramolecular O-H bonds and angles off their rigid values so forces along them are
learned too.
"""

from __future__ import annotations

import numpy as np
from ase import Atoms, units
from ase.calculators.tip3p import TIP3P, angleHOH, rOH
from ase.constraints import FixBondLengths
from ase.md.langevin import Langevin
from ase.md.velocitydistribution import MaxwellBoltzmannDistribution


def _water_molecule(rng: np.random.Generator) -> np.ndarray:
    """O, H, H positions of one rigid TIP3P molecule in a random orientation."""
    half = np.radians(angleHOH) / 2
    local = np.array(
        [[0.0, 0.0, 0.0], [rOH * np.sin(half), 0.0, rOH * np.cos(half)], [-rOH * np.sin(half), 0.0, rOH * np.cos(half)]]
    )
    q, _ = np.linalg.qr(rng.normal(size=(3, 3)))
    return local @ q.T


def random_cluster(n_molecules: int, rng: np.random.Generator, min_oo: float = 2.7) -> Atoms:
    """Place molecules one by one near the cluster, rejecting O-O contacts below min_oo."""
    oxygens: list[np.ndarray] = []
    positions = []
    while len(oxygens) < n_molecules:
        centre = np.zeros(3) if not oxygens else oxygens[rng.integers(len(oxygens))]
        direction = rng.normal(size=3)
        candidate = centre + direction / np.linalg.norm(direction) * rng.uniform(2.75, 3.1)
        if oxygens and min(np.linalg.norm(candidate - o) for o in oxygens) < min_oo:
            continue
        oxygens.append(candidate)
        positions.append(candidate + _water_molecule(rng))
    return Atoms("OHH" * n_molecules, positions=np.concatenate(positions))


def _rigid_constraint(n_molecules: int) -> FixBondLengths:
    pairs = []
    for m in range(n_molecules):
        o = 3 * m
        pairs += [(o, o + 1), (o, o + 2), (o + 1, o + 2)]
    return FixBondLengths(pairs)


def _is_bound(atoms: Atoms, max_oo: float = 3.6) -> bool:
    """Every oxygen has another oxygen within max_oo (no molecule has evaporated)."""
    o = atoms.positions[atoms.numbers == 8]
    if len(o) < 2:
        return True
    d = np.linalg.norm(o[:, None] - o[None], axis=-1)
    np.fill_diagonal(d, np.inf)
    return bool(np.all(d.min(axis=1) < max_oo))


def sample_water_clusters(
    n_structures: int,
    sizes: tuple[int, ...] = (2, 3, 4),
    temperature_K: float = 300.0,
    frames_per_run: int = 10,
    steps_between_frames: int = 20,
    rattle: float = 0.03,
    seed: int = 0,
) -> list[Atoms]:
    """Sample n_structures (H2O)_n geometries, sizes cycled, from independent TIP3P MD runs.

    Each run starts from a random compact cluster, equilibrates briefly and stores
    frames_per_run frames; frames where a molecule has drifted away are dropped.
    """
    rng = np.random.default_rng(seed)
    structures: list[Atoms] = []
    run = 0
    while len(structures) < n_structures:
        n_mol = sizes[run % len(sizes)]
        run += 1
        atoms = random_cluster(n_mol, rng)
        atoms.set_constraint(_rigid_constraint(n_mol))
        atoms.calc = TIP3P(rc=9.0)
        MaxwellBoltzmannDistribution(atoms, temperature_K=temperature_K, rng=rng)
        dyn = Langevin(atoms, 1.0 * units.fs, temperature_K=temperature_K, friction=0.02, fixcm=False, rng=rng)
        dyn.run(60)
        for _ in range(frames_per_run):
            dyn.run(steps_between_frames)
            if not _is_bound(atoms):
                break
            frame = Atoms(atoms.numbers, positions=atoms.positions + rng.normal(scale=rattle, size=atoms.positions.shape))
            frame.positions -= frame.get_center_of_mass()
            structures.append(frame)
            if len(structures) == n_structures:
                break
    for i, frame in enumerate(structures):
        frame.info["struct_id"] = i
    return structures
