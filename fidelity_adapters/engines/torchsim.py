"""TorchSim (`pip install "fidelity-adapters[torchsim]"`): a potential at one named fidelity as
a TorchSim model, so its batched integrators and optimizers run many systems at once.

TorchSim hands a batch of systems as one state (positions, column-vector cells, one periodic
flag for all). Neighbour lists and M3GNet's triplets are built per system on the CPU (numba)
and the network runs on the whole batch on the potential's device.
"""

from __future__ import annotations

import numpy as np
import torch
from torch_geometric.data import Batch

from ..data import LabelledStructure

try:
    import torch_sim as ts
    from torch_sim.models.interface import ModelInterface
except ImportError as error:  # pragma: no cover - depends on the environment
    raise ImportError(f"TorchSim is not installed ({error}); pip install 'fidelity-adapters[torchsim]'") from None


class TorchSimModel(ModelInterface):
    """Energy (n_systems,), forces (n_atoms, 3) and stress (n_systems, 3, 3; eV/A^3, ASE's sign;
    NaN for a cell without volume) of `potential` at `fidelity`. The fidelity is checked here: an unknown name is an error,
    not a default."""

    def __init__(self, potential, fidelity: str, compute_stress: bool = True, compute_forces: bool = True):
        super().__init__()
        potential.fidelity_state.index(fidelity)
        if not compute_forces:
            raise ValueError("forces come with every call (the energy's gradient); compute_forces=False is not offered")
        self.potential = potential.eval()
        self.fidelity = fidelity
        self._device, self._dtype = potential.device, potential.dtype
        self._compute_stress, self._compute_forces = compute_stress, True
        self._memory_scales_with = "n_atoms_x_density"  # a radial cutoff: neighbours grow with density

    def structures(self, state) -> list[LabelledStructure]:
        """One structure per system of a TorchSim state (or state dict)."""
        if isinstance(state, dict):
            state = ts.SimState(**state, masses=torch.ones_like(state["positions"]))
        system_idx = state.system_idx.cpu().numpy() if state.system_idx is not None else np.zeros(state.n_atoms, int)
        positions = state.positions.detach().cpu().double().numpy()
        numbers = state.atomic_numbers.cpu().numpy()
        cells = state.row_vector_cell.detach().cpu().double().numpy()
        pbc = np.full(3, bool(state.pbc))
        out = []
        for k in range(len(cells)):
            atoms = system_idx == k
            out.append(LabelledStructure(numbers[atoms], positions[atoms], cells[k], pbc, self.fidelity, label=f"TorchSim system {k}"))
        return out

    def forward(self, state, **kwargs) -> dict[str, torch.Tensor]:
        structures = self.structures(state)
        batch = Batch.from_data_list([self.potential.graph(s) for s in structures])
        out = self.potential(batch, forces=True, stress=self._compute_stress)
        device = state["positions"].device if isinstance(state, dict) else state.device
        keys = ("energy", "forces", "stress") if self._compute_stress else ("energy", "forces")
        return {key: out[key].detach().to(device, self._dtype) for key in keys}
