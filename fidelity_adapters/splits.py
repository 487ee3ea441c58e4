"""The split protocol of Ko & Ong (Fig. 2), for data where fidelities share structures or not.

Structures at different fidelities are the same geometry when they share
`info["struct_id"]`. Held out first, and independent of the high-fidelity fraction and of
how the high-fidelity subset is sampled: `holdout_fraction` of the geometries, chosen among
those with a high-fidelity label, split equally into validation and test. So every strategy,
fraction and sampling of one seed is tested on the same structures, and no test geometry is
in any training set at any fidelity.

- Shared structures (some geometry has both labels, as in the paper): fractions count all
  geometries. Low-fidelity training = every geometry not held out; high-fidelity training =
  `hifi_fraction` of all geometries, drawn from the high-fidelity geometries not held out
  (when every geometry has both labels, as in the paper, these are the low-fidelity training
  geometries).
- Separate structures (no geometry has both, like the public water sets): fractions count
  the high-fidelity geometries; high-fidelity training is drawn from those not held out, and
  low-fidelity training is every low-fidelity structure except `lofi_validation`.

`lofi_validation` (low-fidelity labels of the validation geometries, or a held-back share of
the low-fidelity pool when structures are separate) lets baselines that train a low-fidelity
model alone (transfer learning, Delta-learning) stop early without touching the test set.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from .data import LabelledStructure, geometry_id
from .serialization import atomic_write


@dataclass
class Split:
    lofi_train: list[int]
    hifi_train: list[int]
    validation: list[int]
    test: list[int]
    lofi_validation: list[int] = field(default_factory=list)
    settings: dict = field(default_factory=dict)

    def save(self, path: str | Path) -> None:
        """Write atomically (a sweep killed mid-write must not leave a half split behind)."""
        text = json.dumps(asdict(self), indent=1)
        atomic_write(path, lambda tmp: Path(tmp).write_text(text))

    @classmethod
    def load(cls, path: str | Path) -> "Split":
        try:
            return cls(**json.loads(Path(path).read_text()))
        except (OSError, json.JSONDecodeError, TypeError) as error:
            raise ValueError(f"{path}: not a readable split file ({error})") from None


Chooser = Callable[[list[int], int], list[int]]


def paper_split(
    structures: Sequence[LabelledStructure],
    lofi: str | Sequence[str],
    hifi: str,
    hifi_fraction: float,
    seed: int,
    holdout_fraction: float = 0.2,
    choose: Chooser | None = None,
) -> Split:
    """Indices into `structures` for each set, reproducible from the seed.

    `lofi` may name several lower fidelities (all enter low-fidelity training). `choose`
    picks the high-fidelity training structures: it gets the candidate indices and how many
    to take (default: seeded uniform random).
    """
    lofi = [lofi] if isinstance(lofi, str) else list(lofi)
    if hifi in lofi:
        raise ValueError(f"{hifi!r} is both the high fidelity and a low one")
    if not 0 < holdout_fraction < 1 or not 0 <= hifi_fraction <= 1:
        raise ValueError(f"fractions must lie in (0, 1): holdout {holdout_fraction}, hifi {hifi_fraction}")
    by_geometry: dict[str, dict[str, int]] = {}
    for k, s in enumerate(structures):
        if s.fidelity in (*lofi, hifi):
            by_geometry.setdefault(geometry_id(s, k), {})[s.fidelity] = k
    geometries = sorted(by_geometry)
    with_hifi = [g for g in geometries if hifi in by_geometry[g]]
    has_lofi = lambda g: any(name in by_geometry[g] for name in lofi)  # noqa: E731
    shared = any(has_lofi(g) for g in with_hifi)
    base = len(geometries) if shared else len(with_hifi)
    n_holdout = int(round(holdout_fraction * base))
    n_hifi_train = int(round(hifi_fraction * base))
    if n_holdout < 2:
        raise ValueError(f"the held-out set needs at least 2 {hifi} geometries (one validation, one test); got {n_holdout}")

    rng = np.random.default_rng(seed)
    shuffled = [with_hifi[k] for k in rng.permutation(len(with_hifi))]
    held_out, candidates = shuffled[:n_holdout], shuffled[n_holdout:]
    held = set(held_out)
    if n_hifi_train > len(candidates):
        raise ValueError(
            f"{hifi_fraction:.0%} of {base} geometries is {n_hifi_train} {hifi} training structures, but only "
            f"{len(candidates)} {hifi} geometries remain after holding out {n_holdout}"
        )
    candidate_ids = [by_geometry[g][hifi] for g in candidates]
    if choose is None:
        chosen_ids = [candidate_ids[k] for k in np.random.default_rng(seed + 1).permutation(len(candidate_ids))[:n_hifi_train]]
    else:
        chosen_ids = [int(k) for k in choose(candidate_ids, n_hifi_train)]
    if len(set(chosen_ids)) != n_hifi_train or not set(chosen_ids) <= set(candidate_ids):
        raise ValueError(f"the chooser must return {n_hifi_train} distinct candidate indices")

    half = len(held_out) // 2
    validation, test = held_out[:half], held_out[half:]
    lofi_pool = [g for g in geometries if g not in held and has_lofi(g)]
    if shared:
        lofi_validation = [g for g in validation if has_lofi(g)]
    else:
        n_lofi_val = max(1, int(round(holdout_fraction / 2 * len(lofi_pool)))) if lofi_pool else 0
        lofi_validation = [lofi_pool[k] for k in rng.permutation(len(lofi_pool))[:n_lofi_val]]
        lofi_pool = [g for g in lofi_pool if g not in set(lofi_validation)]
    lofi_of = lambda gs: [by_geometry[g][name] for g in gs for name in lofi if name in by_geometry[g]]  # noqa: E731
    return Split(
        lofi_train=lofi_of(lofi_pool),
        hifi_train=sorted(chosen_ids),
        validation=[by_geometry[g][hifi] for g in validation],
        test=[by_geometry[g][hifi] for g in test],
        lofi_validation=lofi_of(lofi_validation),
        settings=dict(lofi=lofi, hifi=hifi, hifi_fraction=hifi_fraction, seed=seed,
                      holdout_fraction=holdout_fraction, shared_structures=shared, n_candidates=len(candidates)),
    )  # fmt: skip


def validation_split(
    structures: Sequence[LabelledStructure], val_fraction: float, seed: int, must_validate: str | None = None
) -> tuple[list[int], list[int]]:
    """(train, validation) indices where structures of one geometry (shared struct_id) stay on
    one side, so no geometry is trained at one fidelity and validated at another.

    Each fidelity gets about `val_fraction` of its geometries in validation; the fidelities
    with the fewest structures are drawn first, as their linked geometries then decide the
    larger ones' sides. `must_validate` gets at least one validation geometry if any is free.
    """
    if not 0 < val_fraction < 1:
        raise ValueError(f"val_fraction {val_fraction}: must be between 0 and 1 (exclusive)")
    ids = [geometry_id(s, k) for k, s in enumerate(structures)]
    geometries_of: dict[str, set[str]] = {}
    for s, g in zip(structures, ids):
        geometries_of.setdefault(s.fidelity, set()).add(g)
    rng = np.random.default_rng(seed)
    in_validation: dict[str, bool] = {}
    for name in sorted(geometries_of, key=lambda n: (len(geometries_of[n]), n)):
        own = geometries_of[name]
        free = sorted(own - set(in_validation))
        wanted = int(round(val_fraction * len(own)))
        if name == must_validate:
            wanted = max(wanted, 1)
        need = max(0, wanted - sum(in_validation.get(g, False) for g in own))
        for position, k in enumerate(rng.permutation(len(free))):
            in_validation[free[k]] = position < need
    train = [k for k, g in enumerate(ids) if not in_validation[g]]
    validation = [k for k, g in enumerate(ids) if in_validation[g]]
    return train, validation
