"""What every strategy gets (the data, one split, the training budget) and what it returns
(a predictor for the target fidelity), so that strategies differ only in how they train."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from ..data import LabelledStructure
from ..potential import Potential
from ..recipes import RECIPES
from ..splits import Split
from ..training import TrainConfig


@dataclass
class Task:
    structures: list[LabelledStructure]
    split: Split
    lofi: list[str]
    hifi: str
    config: TrainConfig
    out_dir: Path
    lofi_model_dir: Path  # shared by the strategies of one seed that need a low-fidelity-only model
    backbone_options: dict = field(default_factory=dict)
    pretrain_fidelity: str | None = None  # the low fidelity that transfer/delta build on; default lofi[-1]
    freeze: tuple[str, ...] = ("atom_embedding",)  # transfer learning: parameter-name prefixes kept fixed
    backbone: str = "M3GNet"  # a name in recipes.RECIPES

    def pick(self, ids: Sequence[int]) -> list[LabelledStructure]:
        return [self.structures[k] for k in ids]

    @property
    def elements(self) -> list[int]:
        return sorted({int(z) for s in self.structures for z in np.unique(s.numbers)})

    @property
    def base_fidelity(self) -> str:
        name = self.pretrain_fidelity or self.lofi[-1]
        if name not in self.lofi:
            raise ValueError(f"pretrain fidelity {name!r} is not one of the low fidelities {self.lofi}")
        return name

    def potential(self, fidelities: Sequence[str], **options) -> Potential:
        options = {**self.backbone_options, **options}
        return RECIPES[self.backbone](self.elements, list(fidelities), seed=self.config.seed, **options)

    def config_for(self, monitor: str) -> TrainConfig:
        return replace(self.config, monitor=monitor)


@dataclass
class Fitted:
    """A trained strategy: predictions at the target fidelity, the models behind them, and a
    note for the report on anything a reader must know (where labels came from, say)."""

    predict: Callable[[Sequence[LabelledStructure]], list[dict]]
    potentials: dict[str, Potential]
    note: str = ""
