"""What every strategy gets (the data, one split, the training budget) and what it returns
(a predictor for the target fidelity), so that strategies differ only in how they train."""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from backbones import BACKBONES

from ..data import LabelledStructure
from ..neighbors import average_neighbors
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
    pretrained: str | None = None  # a foundation model name (pretrained/) for the strategies that start from one
    pretrained_base: str | None = None  # its own level that the target starts from; default its first
    finetune: dict = field(default_factory=dict)  # FinetuneConfig options of the ft-* strategies

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
        parameters = inspect.signature(BACKBONES[self.backbone]).parameters
        if "avg_neighbors" in parameters and "avg_neighbors" not in options:  # from the data, unless given
            cutoff = options.get("cutoff", parameters["cutoff"].default)
            # the low-fidelity training set does not change with the high-fidelity fraction, so the
            # low-fidelity model that transfer and delta share stays one model for every fraction
            options["avg_neighbors"] = average_neighbors(self.pick(self.split.lofi_train or self.split.hifi_train), cutoff)
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
    details: dict = field(default_factory=dict)  # per-run numbers for the record (optimizer steps, base-level drift)
