"""fidelity-adapters: one interatomic potential trained on several levels of theory.

    from fidelity_adapters import m3gnet_potential, train, FidelityCalculator
    potential = m3gnet_potential(["H", "O"], fidelities=["PBE", "SCAN"])

Backbones without a global state (mace_style_potential, nequip_style_potential) take the
fidelity through injection into their invariant features (injection.py).
"""

from importlib import import_module

_MODULE_OF = {
    "FidelityCalculator": "calculator", "LabelledStructure": "data", "from_atoms": "data", "from_pymatgen": "data",
    "load_structures": "data", "read_structures": "data", "errors": "evaluation", "FidelityState": "fidelity_state",
    "UnknownFidelityError": "fidelity_state", "Potential": "potential", "wrap": "potential",
    "m3gnet_potential": "recipes", "mace_style_potential": "recipes", "nequip_style_potential": "recipes",
    "load_potential": "serialization", "save_potential": "serialization", "Split": "splits", "paper_split": "splits",
    "TrainConfig": "training", "TrainResult": "training", "train": "training",
}  # fmt: skip
__all__ = sorted(_MODULE_OF)


def __getattr__(name: str):
    """Names are imported on first use, so that `fidelity-adapters --help` does not load torch."""
    if name not in _MODULE_OF:
        raise AttributeError(f"module 'fidelity_adapters' has no attribute {name!r}")
    value = getattr(import_module(f".{_MODULE_OF[name]}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])


__version__ = "0.1.0"
