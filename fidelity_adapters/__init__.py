"""fidelity-adapters: one interatomic potential trained on several levels of theory.

    from fidelity_adapters import m3gnet_potential, train, FidelityCalculator
    potential = m3gnet_potential(["H", "O"], fidelities=["PBE", "SCAN"])

Backbones without a global state (mace_style_potential, nequip_style_potential) take the
fidelity through injection into their invariant features (injection.py).
"""

from .calculator import FidelityCalculator
from .data import LabelledStructure, from_atoms, from_pymatgen, load_structures, read_structures
from .evaluation import errors
from .fidelity_state import FidelityState, UnknownFidelityError
from .potential import Potential, wrap
from .recipes import m3gnet_potential, mace_style_potential, nequip_style_potential
from .serialization import load_potential, save_potential
from .splits import Split, paper_split
from .training import TrainConfig, TrainResult, train

__all__ = [
    "FidelityCalculator", "FidelityState", "LabelledStructure", "Potential", "Split", "TrainConfig",
    "TrainResult", "UnknownFidelityError", "errors", "from_atoms", "from_pymatgen", "load_potential",
    "load_structures", "m3gnet_potential", "mace_style_potential", "nequip_style_potential", "paper_split",
    "read_structures", "save_potential", "train", "wrap",
]  # fmt: skip
__version__ = "0.1.0"
