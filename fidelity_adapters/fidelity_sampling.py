"""How often each fidelity's structures are drawn in an epoch, when not in proportion to their
numbers: 435k PBE structures next to 5k SCAN ones would otherwise give the SCAN level one batch
entry in a hundred.

- fixed ratios, `{"PBE": 0.5, "SCAN": 0.5}`: each draw picks a fidelity with these
  probabilities (normalised), then that fidelity's next structure;
- a temperature T (as fairchem samples its datasets): probabilities proportional to n_f^(1/T);
  T = 1 is proportional sampling, large T approaches equal shares.

An epoch still has as many draws as there are training structures; a fidelity drawn more often
than it has structures goes round its own shuffled list again, one drawn less often leaves the
rest for the next epoch's reshuffle. Loss weights (TrainConfig.fidelity_weights) are a separate
knob: they scale a structure's loss, these change how often it is seen.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch


def probabilities(counts: dict[str, int], ratios: dict[str, float] | None, temperature: float | None) -> dict[str, float]:
    """Each fidelity's share of the draws, from fixed ratios or a temperature (not both)."""
    if ratios is not None and temperature is not None:
        raise ValueError("give sampling ratios or a sampling temperature, not both")
    if ratios is not None:
        unknown, missing = sorted(set(ratios) - set(counts)), sorted(set(counts) - set(ratios))
        if unknown or missing:
            raise ValueError(f"sampling ratios must name exactly the training data's fidelities {sorted(counts)} "
                             f"(not in the data: {unknown}; without a ratio: {missing})")  # fmt: skip
        if any(not r >= 0 for r in ratios.values()) or not sum(ratios.values()) > 0:
            raise ValueError(f"sampling ratios must be >= 0 with a positive sum, not {ratios}")
        weights = {name: float(ratios[name]) for name in counts}
    elif temperature is not None:
        if not temperature > 0:
            raise ValueError(f"sampling temperature must be > 0, not {temperature}")
        weights = {name: float(n) ** (1.0 / temperature) for name, n in counts.items()}
    else:
        raise ValueError("no sampling ratios or temperature given")
    total = sum(weights.values())
    return {name: w / total for name, w in weights.items()}


def epoch_order(fidelity_of: Sequence[str], shares: dict[str, float], generator: torch.Generator) -> list[int]:
    """len(fidelity_of) structure indices: each draw's fidelity by `shares`, then the next index
    of that fidelity in a shuffled order (reshuffled when it runs out)."""
    names = list(shares)
    members = {name: np.flatnonzero(np.asarray(fidelity_of) == name) for name in names}
    draws = torch.multinomial(torch.tensor([shares[n] for n in names], dtype=torch.float64), len(fidelity_of),
                              replacement=True, generator=generator).tolist()  # fmt: skip
    queues: dict[str, list[int]] = {name: [] for name in names}
    order = []
    for draw in draws:
        name = names[draw]
        if not queues[name]:
            queues[name] = members[name][torch.randperm(len(members[name]), generator=generator).numpy()].tolist()[::-1]
        order.append(queues[name].pop())
    return order
