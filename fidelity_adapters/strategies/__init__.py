"""Ways to get a potential for the target (high) fidelity, all trained by the same trainer on
the same split: `mfi`, `single`, `transfer`, `delta`, `multihead`. One module each."""

from .delta import DeltaPotential, fit_delta
from .multifidelity import fit_multifidelity
from .multihead import fit_multihead
from .single import fit_single
from .task import Fitted, Task
from .transfer import fit_transfer, freeze

STRATEGIES = {
    "mfi": fit_multifidelity,
    "single": fit_single,
    "transfer": fit_transfer,
    "delta": fit_delta,
    "multihead": fit_multihead,
}


def fit(strategy: str, task: Task) -> Fitted:
    if strategy not in STRATEGIES:
        raise ValueError(f"unknown strategy {strategy!r}; known: {list(STRATEGIES)}")
    return STRATEGIES[strategy](task)


__all__ = ["STRATEGIES", "DeltaPotential", "Fitted", "Task", "fit", "freeze"]
