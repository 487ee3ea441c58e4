"""TorchSim (`pip install "fidelity-adapters[torchsim]"`): a potential at one named fidelity as
a TorchSim model, so its batched integrators and optimizers run many systems at once.

TorchSim hands a batch of systems as one state (positions, column-vector cells, one periodic
flag for all). Neighbour lists and M3GNet's triplets are built per system on the CPU (numba)
and the network runs on the batch on the potential's device: on a GPU the whole batch in one
call, on a CPU in consecutive groups of at most `max_atoms_per_call` atoms (default 64; a
larger system alone). Measured on one CPU thread (M3GNet-MatPES, 24-atom water boxes, 16,000
triplets each), the network's time per system was 0.11 s in groups of 1-2 systems, 0.15-0.17
s in groups of 4-8 and 0.23 s for 32 at once: its three-body tensors (triplets x features)
outgrow the processor's caches, and a CPU gains no parallelism from a larger batch to pay for it.
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


CPU_ATOMS_PER_CALL = 64


class TorchSimModel(ModelInterface):
    """Energy (n_systems,), forces (n_atoms, 3) and stress (n_systems, 3, 3; eV/A^3, ASE's sign;
    NaN for a cell without volume) of `potential` at `fidelity`. The fidelity is checked here: an unknown name is an error,
    not a default."""

    def __init__(
        self, potential, fidelity: str, compute_stress: bool = True, compute_forces: bool = True,
        max_atoms_per_call: int | None = CPU_ATOMS_PER_CALL,
    ):  # fmt: skip
        """max_atoms_per_call: the network runs on groups of consecutive systems of at most this
        many atoms (None: the whole batch at once); applies on a CPU only, see the module's note."""
        super().__init__()
        potential.fidelity_state.index(fidelity)
        if not compute_forces:
            raise ValueError("forces come with every call (the energy's gradient); compute_forces=False is not offered")
        self.potential = potential.eval()
        self.fidelity = fidelity
        self._device, self._dtype = potential.device, potential.dtype
        self._compute_stress, self._compute_forces = compute_stress, True
        self._memory_scales_with = "n_atoms_x_density"  # a radial cutoff: neighbours grow with density
        if max_atoms_per_call is not None and max_atoms_per_call < 1:
            raise ValueError(f"max_atoms_per_call must be a positive number of atoms or None, not {max_atoms_per_call}")
        self.max_atoms_per_call = max_atoms_per_call if self._device.type == "cpu" else None

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
        keys = ("energy", "forces", "stress") if self._compute_stress else ("energy", "forces")
        parts = {key: [] for key in keys}
        for group in groups_of_atoms(self.structures(state), self.max_atoms_per_call):
            batch = Batch.from_data_list([self.potential.graph(s) for s in group])
            out = self.potential(batch, forces=True, stress=self._compute_stress)
            for key in keys:
                parts[key].append(out[key].detach())
        device = state["positions"].device if isinstance(state, dict) else state.device
        return {key: torch.cat(values).to(device, self._dtype) for key, values in parts.items()}


def groups_of_atoms(structures: list, max_atoms: int | None) -> list[list]:
    """Consecutive structures in groups of at most max_atoms atoms (a larger one alone; None:
    one group), so that concatenating the groups' outputs keeps TorchSim's atom order."""
    if max_atoms is None:
        return [structures]
    groups, size = [], 0
    for structure in structures:
        if not groups or size + len(structure.numbers) > max_atoms:
            groups.append([])
            size = 0
        groups[-1].append(structure)
        size += len(structure.numbers)
    return groups
