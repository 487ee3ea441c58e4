"""transfer: pretrain on the low fidelity, freeze some layers, fine-tune on the high fidelity.

The paper froze the embedding layer; `task.freeze` lists the parameter-name prefixes to keep
fixed (e.g. "atom_embedding", "bond_embedding", "three_body.0", "blocks.0"). Elemental
reference energies are re-fitted for the high fidelity before fine-tuning (total energies of
two functionals differ by eV/atom, which no fine-tuning of a network should have to learn),
around the pretrained network's own output on the high-fidelity structures, so that the
fine-tuning starts without a mean energy error; the energy scale stays the pretrained one.
"""

from __future__ import annotations

from ..training import train
from .lofi_model import lofi_model
from .task import Fitted, Task


def freeze(potential, prefixes) -> list[str]:
    """Set requires_grad=False on backbone parameters whose names start with a prefix; return
    their names. A prefix that matches nothing is an error, not a silent no-op."""
    named = dict(potential.backbone.named_parameters())
    frozen = []
    for prefix in prefixes:
        matched = [n for n in named if n == prefix or n.startswith(prefix + ".")]
        if not matched:
            modules = sorted({n.split(".")[0] for n in named})
            raise ValueError(f"freeze prefix {prefix!r} matches no backbone parameter; top-level modules: {modules}")
        frozen.extend(matched)
    for n in frozen:
        named[n].requires_grad_(False)
    return frozen


def fit_transfer(task: Task) -> Fitted:
    if not task.split.hifi_train:
        raise ValueError(f"no {task.hifi} training structures to fine-tune on")
    pretrained = lofi_model(task)
    potential = task.potential([task.hifi])
    potential.backbone.load_state_dict(pretrained.backbone.state_dict())
    potential.fidelity_state.scale.copy_(pretrained.fidelity_state.scale)
    hifi_train = task.pick(task.split.hifi_train)
    potential.fit_references(hifi_train, refit_scale=False, around_network=True)
    frozen = freeze(potential, task.freeze)
    train(potential, hifi_train, task.pick(task.split.validation), task.config_for(task.hifi), task.out_dir, fit_references=False)
    note = f"pretrained on {task.base_fidelity}; frozen: {', '.join(task.freeze)} ({len(frozen)} tensors)"
    models = {"pretrained": pretrained, "transfer": potential}
    return Fitted(lambda structures: potential.predict(structures, task.hifi), models, note)
