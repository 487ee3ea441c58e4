"""A silicon fidelity ladder with exact answers: Stillinger-Weber ("SW", low) and the
Tersoff-type potential of Erhart & Albe ("Tersoff", high), both from matscipy.

Both are cheap and differentiable everywhere, so any quantity a trained model predicts (an
equation of state, a relaxed structure) can be checked against the high level exactly.
They agree on diamond silicon but not on the dense phases, which is the situation a
multi-fidelity model has to cope with. Needs the optional extra: pip install -e '.[classical]'.
"""

from __future__ import annotations

import numpy as np
from ase import Atoms

from .data import LabelledStructure, from_atoms
from .physics.eos import SI_POLYMORPHS, silicon_polymorph

LEVELS = ("SW", "Tersoff")


def calculator(level: str):
    """A fresh ASE calculator for one level of the ladder."""
    try:
        from matscipy.calculators.manybody import Manybody
        from matscipy.calculators.manybody.explicit_forms import StillingerWeber, TersoffBrenner
        from matscipy.calculators.manybody.explicit_forms.stillinger_weber import Stillinger_Weber_PRB_31_5262_Si
        from matscipy.calculators.manybody.explicit_forms.tersoff_brenner import Erhart_PRB_71_035211_Si
    except ImportError:
        raise ImportError("the classical silicon ladder needs matscipy: pip install -e '.[classical]'") from None
    if level == "SW":
        return Manybody(**StillingerWeber(Stillinger_Weber_PRB_31_5262_Si))
    if level == "Tersoff":
        return Manybody(**TersoffBrenner(Erhart_PRB_71_035211_Si))
    raise ValueError(f"unknown silicon level {level!r}; known: {list(LEVELS)}")


def sample_silicon(n: int, seed: int = 0, polymorphs=SI_POLYMORPHS, volume_range=(0.85, 1.15)) -> list[Atoms]:
    """Small cells of the silicon polymorphs, isotropically scaled, sheared and rattled, so
    that energy-volume curves of every phase are covered."""
    rng = np.random.default_rng(seed)
    frames = []
    for k in range(n):
        atoms = silicon_polymorph(polymorphs[k % len(polymorphs)])
        repeat = [max(1, int(np.ceil(6.0 / length))) for length in atoms.cell.lengths()]
        atoms = atoms.repeat(repeat)
        scale = rng.uniform(*volume_range) ** (1 / 3)
        strain = np.eye(3) * scale + rng.normal(scale=0.02, size=(3, 3))
        atoms.set_cell(atoms.cell.array @ strain, scale_atoms=True)
        atoms.positions += rng.normal(scale=0.05, size=atoms.positions.shape)
        atoms.info["struct_id"] = k
        atoms.info["phase"] = polymorphs[k % len(polymorphs)]
        frames.append(atoms)
    return frames


def label(frames: list[Atoms], level: str) -> list[LabelledStructure]:
    """Energy, forces and stress of each frame at one level, as labelled structures."""
    calc = calculator(level)
    out = []
    for atoms in frames:
        atoms = atoms.copy()
        atoms.calc = calc
        energy, forces, stress = atoms.get_potential_energy(), atoms.get_forces(), atoms.get_stress()
        atoms.calc = None
        atoms.info.update(fidelity=level, energy=energy, stress=stress)
        atoms.arrays["forces"] = forces
        out.append(from_atoms(atoms, label=f"Si {atoms.info['phase']} #{atoms.info['struct_id']} {level}"))
    return out


def silicon_ladder(n: int, seed: int = 0, polymorphs=SI_POLYMORPHS) -> list[LabelledStructure]:
    """`n` geometries, each labelled at both levels (shared struct_id)."""
    frames = sample_silicon(n, seed, polymorphs)
    return label(frames, "SW") + label(frames, "Tersoff")
