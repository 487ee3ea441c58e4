"""Ways to get a potential for the target (high) fidelity, all trained by the same trainer on
the same split: `mfi`, `single`, `transfer`, `delta`, `multihead` from random weights (one module
each), and `zero-shot`, `ft-mfi`, `ft-transfer`, `ft-delta` from a foundation model (pretrained.py)."""

from .delta import DeltaPotential, fit_delta
from .multifidelity import fit_multifidelity
from .multihead import fit_multihead
from .pretrained import fit_finetuned_mfi, fit_finetuned_transfer, fit_foundation_delta, fit_zero_shot
from .single import fit_single
from .task import Fitted, Task
from .transfer import fit_transfer, freeze

STRATEGIES = {
    "mfi": fit_multifidelity,
    "single": fit_single,
    "transfer": fit_transfer,
    "delta": fit_delta,
    "multihead": fit_multihead,
    "zero-shot": fit_zero_shot,
    "ft-mfi": fit_finetuned_mfi,
    "ft-transfer": fit_finetuned_transfer,
    "ft-delta": fit_foundation_delta,
}
FROM_PRETRAINED = ("zero-shot", "ft-mfi", "ft-transfer", "ft-delta")
FROM_SCRATCH = tuple(name for name in STRATEGIES if name not in FROM_PRETRAINED)


def fit(strategy: str, task: Task) -> Fitted:
    if strategy not in STRATEGIES:
        raise ValueError(f"unknown strategy {strategy!r}; known: {list(STRATEGIES)}")
    return STRATEGIES[strategy](task)


__all__ = ["FROM_PRETRAINED", "FROM_SCRATCH", "STRATEGIES", "DeltaPotential", "Fitted", "Task", "fit", "freeze"]
