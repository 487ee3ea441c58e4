"""Benchmark our native M3GNet against matgl's M3GNet (matgl 4.1.2, torch_geometric backend).

    pip install -e '.[bench]'
    python benchmarks/m3gnet_vs_matgl.py [--quick] [--repeats N] [--threads N] [--profile]
                                         [--device cpu|cuda] [--same-size] [--out docs/benchmarks_table.md]

Both models are built in the same process, in float32, with the hyperparameters of Ko & Ong
(2025) mapped one by one (see HYPERPARAMETERS below), and timed on the same structures:

- graph construction, neighbour list and three-body (triplet) indices included;
- one energy + forces + stress call on a ready graph (what an MD step costs in the model);
- one MD step through each library's ASE calculator (graph construction included);
- one training step: 16 x 64-atom rattled Si, energy + force MSE (double backward), Adam;
- peak resident memory of one 1728-atom energy + forces call, each in a fresh subprocess.

Every time is the median of --repeats timed calls after --warmup untimed ones
(time.perf_counter, with torch.cuda.synchronize around each call on a GPU); the calls of the
two implementations are interleaved, in alternating order, so a changing machine load
affects both alike. Ratios are
always stated from our side: "2.0x faster" means ours takes half matgl's time (or has twice
its throughput), "2.0x less" memory means half of matgl's.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

from fidelity_adapters.devices import parse_device

DEFAULT_SIZES = (8, 64, 216, 512, 1728)  # atoms of cubic diamond Si supercells (k^3 x 8)
QUICK_SIZES = (8, 64)
TRAIN_BATCH, TRAIN_ATOMS = 16, 64
ELEMENTS = {"Si": ("Si",), "water": ("H", "O")}

# Ko & Ong (2025) / Chen & Ong (2022) hyperparameters and how each one is spelled in the two
# implementations. matgl's M3GNet constructor fixes the hidden widths of the update MLPs to
# [units, units] and its per-atom readout to GatedMLP(units, units, units, 1) on top of the
# node features; ours defaults to the paper's single hidden layer (221,597 parameters for one
# element). --same-size gives ours matgl's depths (hidden=(64, 64), readout_hidden=(64, 64, 64)),
# which makes the two parameter counts identical (279,837 for Si).
HYPERPARAMETERS = [
    # (meaning, ours (M3GNet kwarg), matgl (M3GNet kwarg), value)
    ("bond (graph) cutoff, A", "cutoff", "cutoff", "5.0"),
    ("three-body cutoff, A", "three_body_cutoff", "threebody_cutoff", "4.0"),
    ("atom feature width", "node_dim", "dim_node_embedding", "64"),
    ("bond feature width", "edge_dim", "dim_edge_embedding", "64"),
    ("width of the update / readout MLPs", "hidden, readout_hidden", "units", "64"),
    ("interaction blocks", "n_blocks", "nblocks", "3"),
    ("bond-length basis: smooth spherical Bessel, 3 functions", "n_radial=3", "use_smooth=True, max_n=3", "3"),
    ("three-body basis: max_n x max_l radial x Y_l^0", "max_n, max_l", "max_n, max_l (use_phi=False)", "3, 3"),
    ("elements (one embedding row each)", "n_elements", "element_types", "('Si',) / ('H', 'O')"),
    ("global state (single fidelity: none)", "state_dim=0", "include_state=False", "-"),
    ("per-atom (extensive) energy readout", "GatedMLP readout per atom", "is_intensive=False", "-"),
    ("activation", "SiLU", "activation_type='swish'", "SiLU"),
    ("dtype", "float32 (torch default)", "matgl.float_th = float32", "float32"),
]


# ----------------------------------------------------------------------------- structures


def silicon(n_atoms: int, seed: int = 0):
    """Rattled cubic diamond Si, (n_atoms / 8)^(1/3) conventional cells along each axis."""
    from ase.build import bulk

    k = round((n_atoms / 8) ** (1 / 3))
    if 8 * k**3 != n_atoms:
        raise ValueError(f"{n_atoms} atoms is not 8 k^3")
    atoms = bulk("Si", "diamond", a=5.43, cubic=True).repeat(k)
    atoms.rattle(stdev=0.05, seed=seed)
    return atoms


def water_box(n_molecules: int = 64, density: float = 1.0, seed: int = 0, min_distance: float = 1.5):
    """n rigid H2O at `density` g/cm^3 in a cubic periodic box: molecules on a jittered grid with
    random orientations, each redrawn until no atom is closer than min_distance (A) to an atom of
    another molecule (minimum image). Deterministic for a seed."""
    from ase import Atoms
    from ase.build import molecule
    from ase.units import _Nav

    mass = 18.01528  # g/mol
    length = (n_molecules * mass / _Nav / density * 1e24) ** (1 / 3)
    per_side = int(np.ceil(n_molecules ** (1 / 3)))
    spacing = length / per_side
    template = molecule("H2O").positions
    template -= template[0]  # O at the origin
    rng = np.random.default_rng(seed)
    placed: list[np.ndarray] = []
    sites = [(a, b, c) for a in range(per_side) for b in range(per_side) for c in range(per_side)][:n_molecules]
    for site in sites:
        for _ in range(1000):
            q, r = np.linalg.qr(rng.normal(size=(3, 3)))
            rotation = q * np.sign(np.diag(r))
            if np.linalg.det(rotation) < 0:
                rotation[:, 0] *= -1
            centre = (np.array(site) + 0.5) * spacing + rng.uniform(-0.3, 0.3, 3)
            candidate = template @ rotation.T + centre
            if placed:
                others = np.concatenate(placed)
                d = candidate[:, None, :] - others[None, :, :]
                d -= length * np.round(d / length)
                if np.sqrt((d**2).sum(-1)).min() < min_distance:
                    continue
            placed.append(candidate)
            break
        else:
            raise RuntimeError("could not place a water molecule")
    atoms = Atoms("OH2" * n_molecules, positions=np.concatenate(placed), cell=np.eye(3) * length, pbc=True)
    atoms.wrap()
    return atoms


def systems(sizes):
    out = [(f"Si {n}", "Si", silicon(n, seed=n)) for n in sizes]
    out.append(("water 64 H2O", "water", water_box()))
    return out


def training_set(seed: int = 1):
    """16 rattled 64-atom Si cells with synthetic energy and force labels (same for both)."""
    rng = np.random.default_rng(seed)
    frames = []
    for k in range(TRAIN_BATCH):
        atoms = silicon(TRAIN_ATOMS, seed=100 + k)
        atoms.info["energy"] = -5.4 * TRAIN_ATOMS + rng.normal()
        atoms.arrays["forces"] = rng.normal(scale=0.5, size=(TRAIN_ATOMS, 3))
        frames.append(atoms)
    return frames


# ----------------------------------------------------------------------------- implementations


class Ours:
    name = "ours"

    def __init__(self, elements, device, same_size=False):
        from fidelity_adapters import m3gnet_potential

        options = dict(hidden=(64, 64), readout_hidden=(64, 64, 64)) if same_size else {}
        self.device = torch.device(device)
        self.potential = m3gnet_potential(list(elements), ["PBE"], **options).to(self.device).eval()
        self.model = self.potential

    def n_params(self):
        return sum(p.numel() for p in self.potential.parameters() if p.requires_grad)

    def graph(self, atoms):
        """Potential.graph: structure conversion and checks, neighbour list, numba triplets."""
        return self.potential.graph(atoms, "PBE")

    @staticmethod
    def counts(graph):
        return int(graph.edge_index.shape[1]), int(graph.triplet_edge_ids.shape[1])

    def ready(self, graph):
        from torch_geometric.data import Batch

        return Batch.from_data_list([graph]).to(self.device)

    def efs(self, ready, stress=True):
        out = self.potential(ready, forces=True, stress=stress)
        return out["forces"]

    def calculator(self):
        from fidelity_adapters import FidelityCalculator

        return FidelityCalculator(self.potential, "PBE")

    def train_step_fn(self, frames, cached_line_graph=True):
        """What train() does per batch: collate, _loss_terms / _loss (masked energy-per-atom and
        force MSE, forces with create_graph), backward, Adam step."""
        from torch_geometric.data import Batch

        from fidelity_adapters.training import TrainConfig, _loss, _loss_terms

        graphs = [self.potential.graph(a, "PBE") for a in frames]
        config = TrainConfig(force_weight=1.0, stress_weight=0.0)
        optimizer = torch.optim.Adam([p for p in self.potential.parameters() if p.requires_grad], lr=1e-4)

        def step():
            self.potential.train()
            batch = Batch.from_data_list(graphs).to(self.device)
            optimizer.zero_grad()
            loss = _loss(_loss_terms(self.potential, batch, config, training=True), config)
            loss.backward()
            optimizer.step()
            self.potential.eval()
            return loss.detach()

        return step


class Matgl:
    name = "matgl"

    def __init__(self, elements, device):
        from matgl.apps.pes import Potential
        from matgl.ext.ase import Atoms2Graph
        from matgl.models import M3GNet

        self.device = torch.device(device)
        self.model = M3GNet(
            element_types=tuple(elements),
            is_intensive=False,
            cutoff=5.0,
            threebody_cutoff=4.0,
            dim_node_embedding=64,
            dim_edge_embedding=64,
            units=64,
            nblocks=3,
            max_n=3,
            max_l=3,
            use_smooth=True,
            use_phi=False,
            include_state=False,
            activation_type="swish",
        )
        # eval(): a freshly built nn.Module is in training mode, and matgl's Potential then
        # differentiates with create_graph=True (double-backward ready), which inference skips.
        self.potential = Potential(self.model, calc_forces=True, calc_stresses=True).to(self.device).eval()
        self.potential_ef = Potential(self.model, calc_forces=True, calc_stresses=False).to(self.device).eval()
        self.converter = Atoms2Graph(tuple(elements), cutoff=5.0)

    def n_params(self):
        return sum(p.numel() for p in self.model.parameters() if p.requires_grad)

    def line_graph(self, g, lat):
        """matgl's three-body indices, as its M3GNet.forward builds them when not given."""
        from matgl.graph._compute import compute_pair_vector_and_distance, create_line_graph

        lattice = lat.reshape(-1, 3, 3)[0]
        pos = g.frac_coords @ lattice
        _, bond_dist = compute_pair_vector_and_distance(pos, g.edge_index, g.pbc_offset @ lattice)
        return create_line_graph(g.edge_index, bond_dist, None, None, g.num_nodes, self.model.threebody_cutoff)

    def graph(self, atoms):
        """Atoms2Graph (pymatgen find_points_in_spheres) + create_line_graph."""
        g, lat, state = self.converter.get_graph(atoms)
        return g, lat, torch.as_tensor(state), self.line_graph(g, lat)

    @staticmethod
    def counts(graph):
        g, _, _, l_g = graph
        return int(g.edge_index.shape[1]), int(l_g["line_edge_index"].shape[1])

    def ready(self, graph):
        g, lat, state, l_g = graph
        d = self.device
        l_g = {k: v.to(d) if isinstance(v, torch.Tensor) else v for k, v in l_g.items()}
        return g.to(d), lat.to(d), state.to(d), l_g

    def efs(self, ready, stress=True):
        g, lat, state, l_g = ready
        potential = self.potential if stress else self.potential_ef
        out = potential(g, lat, state, l_g=l_g)
        return out[1]

    def calculator(self):
        from matgl.ext.ase import PESCalculator

        return PESCalculator(self.potential, stress_unit="eV/A3")

    def train_step_fn(self, frames, cached_line_graph=True):
        """What matgl's PotentialLightningModule.step does (without Lightning): collate_fn_pes,
        Potential in training mode (forces with create_graph), energy-per-atom and force MSE,
        backward, Adam step. matgl's trainer default (include_line_graph=False) rebuilds the
        line graph inside every forward; cached_line_graph=True passes it precomputed."""
        from matgl.apps.pes import Potential
        from matgl.graph.data import collate_fn_pes

        items = []
        for atoms in frames:
            g, lat, state = self.converter.get_graph(atoms)
            labels = {
                "energies": torch.tensor(atoms.info["energy"], dtype=torch.float32),
                "forces": torch.tensor(atoms.arrays["forces"], dtype=torch.float32),
            }
            items.append((g, lat, torch.as_tensor(state), labels))
        potential = Potential(self.model, calc_forces=True, calc_stresses=False).to(self.device)
        optimizer = torch.optim.Adam([p for p in self.model.parameters() if p.requires_grad], lr=1e-4)
        l_g = None
        if cached_line_graph:
            g, lat, _, _, _, _ = collate_fn_pes(items, include_stress=False)
            l_g = self.ready((g, lat, torch.zeros(0), self.line_graph(g, lat)))[3]

        def step():
            potential.train()
            g, lat, state, e, f, _ = collate_fn_pes(items, include_stress=False)
            g, lat, state, e, f = (x.to(self.device) for x in (g, lat, state, e, f))
            optimizer.zero_grad()
            energies, forces, _, _ = potential(g, lat, state, l_g=l_g)
            natoms = torch.bincount(g.batch)
            loss = torch.nn.functional.mse_loss(energies / natoms, e / natoms) + torch.nn.functional.mse_loss(forces, f)
            loss.backward()
            optimizer.step()
            potential.eval()
            return loss.detach()

        return step


# ----------------------------------------------------------------------------- timing


def on_cuda(device) -> bool:
    return torch.device(device).type == "cuda"


def _sync(device):
    if on_cuda(device):
        torch.cuda.synchronize()


def _timed(fn, device):
    _sync(device)
    start = time.perf_counter()
    fn()
    _sync(device)
    return time.perf_counter() - start


def median_time(fn, repeats, warmup, device):
    for _ in range(warmup):
        fn()
    return statistics.median(_timed(fn, device) for _ in range(repeats))


def interleaved_medians(fns, repeats, warmup, device):
    """Median time of each function, their calls interleaved (and the order rotated every
    round) so that a drifting machine load hits all of them alike."""
    for _ in range(warmup):
        for fn in fns:
            fn()
    times = [[] for _ in fns]
    for k in range(repeats):
        for m in range(len(fns)):
            index = (m + k) % len(fns)
            times[index].append(_timed(fns[index], device))
    return [statistics.median(t) for t in times]


def ratio_text(ours, theirs, higher_is_better):
    """'2.0x faster' / '1.5x slower' (or 'less' / 'more' for memory) from our side."""
    if not ours or not theirs:
        return "-"
    r = ours / theirs if higher_is_better else theirs / ours
    if abs(r - 1) < 0.005:
        return "1.00x (same)"
    return f"{r:.2f}x faster" if r >= 1 else f"{1 / r:.2f}x slower"


def memory_ratio(ours, theirs):
    if ours is None or theirs is None or ours <= 0 or theirs <= 0:
        return "-"
    return f"{theirs / ours:.2f}x less" if theirs >= ours else f"{ours / theirs:.2f}x more"


# ----------------------------------------------------------------------------- memory (child)


def _status_kib(key):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    return None


def memory_child(impl_name, n_atoms, device, threads, same_size):
    """Run in a fresh process: RSS before, peak RSS during one n-atom E+F call."""
    import resource

    torch.set_num_threads(threads)
    impl = Ours(ELEMENTS["Si"], device, same_size) if impl_name == "ours" else Matgl(ELEMENTS["Si"], device)
    impl.efs(impl.ready(impl.graph(silicon(8, seed=8))), stress=False)  # lazy initialisation, kernels
    ready = impl.ready(impl.graph(silicon(n_atoms, seed=n_atoms)))
    gc.collect()
    baseline = _status_kib("VmRSS")
    maxrss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    try:  # reset the high-water mark so the peak is this call's (Linux >= 4.0)
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        reset = True
    except OSError:
        reset = False
    if on_cuda(device):
        torch.cuda.reset_peak_memory_stats()
    forces = impl.efs(ready, stress=False)
    _sync(device)
    del forces
    maxrss_after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    peak = _status_kib("VmHWM") if reset else maxrss_after
    result = {
        "peak_minus_baseline_mib": (peak - baseline) / 1024,
        "ru_maxrss_delta_mib": (maxrss_after - maxrss_before) / 1024,
        "baseline_mib": baseline / 1024,
        "hwm_reset": reset,
    }
    if on_cuda(device):
        result["cuda_peak_mib"] = torch.cuda.max_memory_allocated() / 2**20
    print("MEMORY " + json.dumps(result))


def measure_memory(impl_name, n_atoms, args):
    command = [sys.executable, os.path.abspath(__file__), "--_memory-child", impl_name, "--_memory-atoms", str(n_atoms),
               "--threads", str(args.threads), "--device", args.device] + (["--same-size"] if args.same_size else [])  # fmt: skip
    proc = subprocess.run(command, capture_output=True, text=True, env=os.environ.copy())
    for line in proc.stdout.splitlines():
        if line.startswith("MEMORY "):
            return json.loads(line[len("MEMORY ") :])
    print(f"memory child for {impl_name} failed:\n{proc.stderr[-3000:]}", file=sys.stderr)
    return None


# ----------------------------------------------------------------------------- profile


def profile_ours(impl, atoms, repeats, warmup, device):
    """Where our E+F call and its graph go: conversion/checks, neighbour list, triplets,
    collation, forward (autograd recording), backward (autograd.grad)."""
    from fidelity_adapters.data import from_atoms, validate
    from fidelity_adapters.graph import build_graph
    from fidelity_adapters.neighbors import neighbor_list

    pot = impl.potential
    t = lambda fn: median_time(fn, repeats, warmup, device)  # noqa: E731
    structure = from_atoms(atoms, "PBE")
    graph = build_graph(structure, pot.elements, 0, pot.backbone.cutoff, check=False)
    ready = impl.ready(impl.graph(atoms))
    rows = {
        "from_atoms (ASE -> LabelledStructure)": t(lambda: from_atoms(atoms, "PBE")),
        "validate (values; overlaps come from the graph's neighbour list)": t(lambda: validate(structure, overlaps=False)),
        "neighbour list, 5 A (numba)": t(lambda: neighbor_list(structure.positions, structure.cell, structure.pbc, 5.0)),
        "build_graph without checks (incl. neighbour list)": t(
            lambda: build_graph(structure, pot.elements, 0, pot.backbone.cutoff, check=False)
        ),
        "triplets (augment_graph, numba)": t(lambda: pot.backbone.augment_graph(graph)),
        "Batch.from_data_list + .to(device)": t(lambda: impl.ready(graph)),
    }
    forward = t(lambda: pot(ready, forces=False))
    with torch.no_grad():
        forward_no_grad = t(lambda: pot(ready, forces=False))
    ef = t(lambda: pot(ready, forces=True))
    efs = t(lambda: pot(ready, forces=True, stress=True))
    rows.update({
        "forward, energy only (records autograd graph)": forward,
        "forward under no_grad (message passing alone)": forward_no_grad,
        "backward for forces (E+F minus forward)": ef - forward,
        "E+F call": ef,
        "E+F+S call": efs,
    })  # fmt: skip
    return rows


def top_ops(impl, atoms, n=10):
    """torch.profiler's most expensive operators (self CPU time) of one E+F call."""
    from torch.profiler import ProfilerActivity, profile

    ready = impl.ready(impl.graph(atoms))
    impl.efs(ready, stress=False)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        impl.efs(ready, stress=False)
    return prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=n)


# ----------------------------------------------------------------------------- main


def machine_header(args):
    import matgl

    from fidelity_adapters.compare import cpu_model

    model = cpu_model()

    lines = [
        f"- machine: {os.cpu_count()} logical cores, {model}; {platform.system()} {platform.release()}",
        f"- torch {torch.__version__}, torch_geometric {__import__('torch_geometric').__version__}, matgl {matgl.__version__}, "
        f"Python {platform.python_version()}",
        f"- device {args.device}" + (f" ({torch.cuda.get_device_name(args.device)})" if on_cuda(args.device) else "")
        + f", torch threads {torch.get_num_threads()}, OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}"
        + ", dtype float32",
        f"- median of {args.repeats} timed call(s) after {args.warmup} warm-up call(s); ours and matgl interleaved",
    ]
    if args.note:
        lines.append(f"- note: {args.note}")
    return lines


def fmt_time(seconds):
    return f"{seconds * 1e3:.2f} ms" if seconds < 1 else f"{seconds:.3f} s"


def fmt_rate(value):
    return f"{value:,.0f}" if value >= 100 else f"{value:.3g}"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="8- and 64-atom Si (and the water box), 1 repeat")
    parser.add_argument("--repeats", type=int, default=None, help="timed calls per entry (median); default 5, 1 with --quick")
    parser.add_argument("--warmup", type=int, default=1, help="untimed calls before timing (default 1)")
    parser.add_argument("--threads", type=int, default=1, help="torch.set_num_threads (default 1)")
    parser.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    parser.add_argument("--sizes", default=None, help="comma-separated Si sizes (8 k^3 atoms), overriding the defaults")
    parser.add_argument("--same-size", action="store_true", help="give ours matgl's MLP depths (identical parameter counts)")
    parser.add_argument("--profile", action="store_true", help="break our E+F call at 216 and 1728 atoms into its parts")
    parser.add_argument("--no-memory", action="store_true", help="skip the peak-memory subprocesses")
    parser.add_argument("--memory-children", type=int, default=3, help="fresh subprocesses per side for the memory row (median)")
    parser.add_argument("--note", default="", help="a line added to the header (e.g. 'busy machine')")
    parser.add_argument("--out", default=None, help="also write the markdown to this file")
    parser.add_argument("--_memory-child", dest="memory_child", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--_memory-atoms", dest="memory_atoms", type=int, default=1728, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    try:
        parse_device(args.device, "--device")
    except ValueError as error:
        parser.error(str(error))
    torch.set_num_threads(args.threads)
    if args.memory_child:
        memory_child(args.memory_child, args.memory_atoms, args.device, args.threads, args.same_size)
        return
    if args.repeats is None:
        args.repeats = 1 if args.quick else 5
    sizes = tuple(int(s) for s in args.sizes.split(",")) if args.sizes else (QUICK_SIZES if args.quick else DEFAULT_SIZES)
    memory_atoms = max(sizes) if args.quick or args.sizes else 1728
    profile_sizes = tuple(s for s in (QUICK_SIZES if args.quick else (216, 1728)))
    timing = (args.repeats, args.warmup, args.device)
    started = time.perf_counter()
    log = lambda *a: print(*a, file=sys.stderr, flush=True)  # noqa: E731

    impls = {}
    for key, elements in ELEMENTS.items():
        impls[key] = (Ours(elements, args.device, args.same_size), Matgl(elements, args.device))
    for ours, theirs in impls.values():
        assert next(ours.potential.parameters()).dtype == torch.float32
        assert next(theirs.model.parameters()).dtype == torch.float32

    out = ["# M3GNet: fidelity-adapters vs matgl", ""] + machine_header(args) + [""]
    out += ["## Models", "", "| hyperparameter | ours | matgl | value |", "|---|---|---|---|"]
    out += [f"| {a} | `{b}` | `{c}` | {d} |" for a, b, c, d in HYPERPARAMETERS]
    out += ["", "| trainable parameters | ours | matgl |", "|---|---|---|"]
    for key, (ours, theirs) in impls.items():
        out.append(f"| {key} ({', '.join(ELEMENTS[key])}) | {ours.n_params():,} | {theirs.n_params():,} |")
    shape = "hidden=(64, 64), readout_hidden=(64, 64, 64) (--same-size)" if args.same_size else "the paper's defaults"
    out += ["", f"Ours is built with {shape}. matgl's constructor fixes its update MLPs to two hidden layers "
            "([units, units]) and its per-atom readout to four linear layers (64-64-64-64-1); ours follows the "
            "paper (one hidden layer, readout 64-64-64-1), which is the whole difference in parameters: "
            "6 x 2 x (64 x 64 + 64) + 2 x (64 x 64 + 64) = 58,240. Other differences that cost nothing: matgl "
            "expands the three-body radial part in 9 smooth l-independent Bessel functions on the 5 A cutoff, "
            "ours in j_l(z_ln r / 4 A) (the original M3GNet three-body basis); same number of basis columns (9).",
            ""]  # fmt: skip

    rows = []  # (benchmark, system, atoms, ours, matgl, ratio)
    counts = []
    all_systems = systems(sizes)
    for label, key, atoms in all_systems:
        ours, theirs = impls[key]
        n = len(atoms)
        log(f"[{time.perf_counter() - started:7.1f}s] {label}")
        g_ours, g_theirs = ours.graph(atoms), theirs.graph(atoms)
        counts.append((label, n, *ours.counts(g_ours), *theirs.counts(g_theirs)))
        t_ours, t_theirs = interleaved_medians([lambda: ours.graph(atoms), lambda: theirs.graph(atoms)], *timing)
        rows.append(("graph construction incl. triplets (time)", label, n, fmt_time(t_ours), fmt_time(t_theirs),
                     ratio_text(t_ours, t_theirs, False)))  # fmt: skip

        r_ours, r_theirs = ours.ready(g_ours), theirs.ready(g_theirs)
        t_ours, t_theirs = interleaved_medians([lambda: ours.efs(r_ours), lambda: theirs.efs(r_theirs)], *timing)
        rows.append(("E+F+S on a ready graph (atom-steps/s)", label, n, fmt_rate(n / t_ours), fmt_rate(n / t_theirs),
                     ratio_text(n / t_ours, n / t_theirs, True)))  # fmt: skip

        calc_ours, calc_theirs = ours.calculator(), theirs.calculator()
        properties = ["energy", "forces", "stress"]
        t_ours, t_theirs = interleaved_medians(
            [lambda: calc_ours.calculate(atoms, properties), lambda: calc_theirs.calculate(atoms, properties)], *timing
        )
        rows.append(("MD step incl. graph, ASE calculator (atom-steps/s)", label, n, fmt_rate(n / t_ours),
                     fmt_rate(n / t_theirs), ratio_text(n / t_ours, n / t_theirs, True)))  # fmt: skip

    log(f"[{time.perf_counter() - started:7.1f}s] training step")
    frames = training_set()
    ours, theirs = impls["Si"]
    label = f"Si {TRAIN_BATCH} x {TRAIN_ATOMS}"
    steps = [ours.train_step_fn(frames), theirs.train_step_fn(frames, True), theirs.train_step_fn(frames, False)]
    t_ours, *t_matgl = interleaved_medians(steps, *timing)
    names = ("training step, matgl's line graph cached (structures/s)",
             "training step, matgl's default: line graph rebuilt per step (structures/s)")  # fmt: skip
    for name, t_theirs in zip(names, t_matgl):
        rows.append((name, label, TRAIN_BATCH * TRAIN_ATOMS, fmt_rate(TRAIN_BATCH / t_ours), fmt_rate(TRAIN_BATCH / t_theirs),
                     ratio_text(TRAIN_BATCH / t_ours, TRAIN_BATCH / t_theirs, True)))  # fmt: skip

    memory = {}
    if not args.no_memory:
        log(f"[{time.perf_counter() - started:7.1f}s] memory ({memory_atoms} atoms, subprocesses)")
        # glibc's heap makes one child's peak vary by +-5 %: median of several, interleaved
        children = {"ours": [], "matgl": []}
        for _ in range(args.memory_children):
            for name in children:
                children[name].append(measure_memory(name, memory_atoms, args))
        peaks = {k: [r["peak_minus_baseline_mib"] for r in runs] for k, runs in children.items() if None not in runs}
        memory = {k: children[k] for k in peaks}
        mib = {k: statistics.median(peaks[k]) if k in peaks else None for k in children}
        log("memory children, MiB: " + "; ".join(f"{k} {sorted(round(v) for v in values)}" for k, values in peaks.items()))
        name = f"peak RSS of one E+F call above baseline (MiB, median of {args.memory_children})"
        rows.append((name, f"Si {memory_atoms}", memory_atoms,
                     f"{mib['ours']:.0f}" if mib["ours"] is not None else "failed",
                     f"{mib['matgl']:.0f}" if mib["matgl"] is not None else "failed",
                     memory_ratio(mib["ours"], mib["matgl"])))  # fmt: skip
        if on_cuda(args.device) and len(memory) == 2:
            c = {k: statistics.median(r["cuda_peak_mib"] for r in runs) for k, runs in memory.items()}
            rows.append(("peak CUDA memory allocated, E+F (MiB)", f"Si {memory_atoms}", memory_atoms, f"{c['ours']:.0f}",
                         f"{c['matgl']:.0f}", memory_ratio(c["ours"], c["matgl"])))  # fmt: skip

    out += ["## Results", "", "| benchmark | system | atoms | ours | matgl | ours vs matgl |", "|---|---|---:|---:|---:|---|"]
    out += [f"| {b} | {s} | {n} | {o} | {m} | {r} |" for b, s, n, o, m, r in rows]
    out += ["", "## Graph sizes (sanity check)", "",
            "| system | atoms | edges ours | edges matgl | triplets ours | triplets matgl | same |",
            "|---|---:|---:|---:|---:|---:|---|"]  # fmt: skip
    for label, n, e1, t1, e2, t2 in counts:
        out.append(f"| {label} | {n} | {e1:,} | {e2:,} | {t1:,} | {t2:,} | {'yes' if (e1, t1) == (e2, t2) else 'NO'} |")
    out += ["", "Both count directed edges (i->j and j->i, every periodic image) within 5 A and ordered triplets "
            "(pairs of distinct edges i->j, i->k sharing the centre i, both within 4 A), so the counts must agree.",
            ""]  # fmt: skip

    out += ["## What each row measures", "",
            "- graph construction: ours `Potential.graph(atoms, 'PBE')` (ASE -> LabelledStructure, checks incl. "
            "overlapping atoms from the shortest edge, numba neighbour list, numba triplets); matgl "
            "`Atoms2Graph.get_graph(atoms)` "
            "(pymatgen `find_points_in_spheres`) + bond lengths + `create_line_graph` (its three-body indices, "
            "which its `M3GNet.forward` builds whenever no line graph is passed, i.e. on every ASE calculator call).",
            "- E+F+S: ours `potential(batch, forces=True, stress=True)` on a collated Batch; matgl "
            "`Potential(model, calc_forces=True, calc_stresses=True).eval()(g, lat, state, l_g=l_g)` with the line "
            "graph passed in. Graph construction excluded on both sides.",
            "- MD step: one `calculate(atoms, ['energy', 'forces', 'stress'])` of `FidelityCalculator` and of "
            "matgl's `PESCalculator` (stress in eV/A^3): everything a step of ASE MD costs in the potential.",
            "- training step: collate 16 graphs (built beforehand), energy-per-atom + force MSE with forces "
            "differentiable (double backward), `backward()`, Adam step. Ours through `fidelity_adapters.training` "
            "(`_loss_terms`, `_loss`); matgl through `collate_fn_pes` and its `Potential` in training mode, as its "
            "`PotentialLightningModule.step` does (Lightning itself left out), once with the batch's line graph "
            "passed in and once rebuilt inside every forward (its trainer's default, include_line_graph=False). "
            "Our triplets live in the graphs, built once, so both rows compare with the same measurement of ours.",
            "- memory: a fresh subprocess per implementation builds the model and the graph, warms up on 8 atoms, "
            "then reads VmRSS (baseline), resets the high-water mark (/proc/self/clear_refs) and reports VmHWM "
            "minus baseline after one energy + forces call (ru_maxrss where the reset is not allowed); the row is the "
            "median over --memory-children such subprocesses per side.", ""]  # fmt: skip
    if memory:
        out += ["Memory details: `" + json.dumps(memory) + "`", ""]

    if args.profile:
        ours = impls["Si"][0]
        for n in profile_sizes:
            log(f"[{time.perf_counter() - started:7.1f}s] profile {n}")
            atoms = silicon(n, seed=n)
            parts = profile_ours(ours, atoms, args.repeats, args.warmup, args.device)
            out += [f"## Profile of ours, Si {n} atoms", "", "| part | time |", "|---|---:|"]
            out += [f"| {k} | {fmt_time(v)} |" for k, v in parts.items()]
            matgl_impl = impls["Si"][1]
            g, lat, _ = matgl_impl.converter.get_graph(atoms)
            t_nl = median_time(lambda: matgl_impl.converter.get_graph(atoms), args.repeats, args.warmup, args.device)
            t_lg = median_time(lambda: matgl_impl.line_graph(g, lat), args.repeats, args.warmup, args.device)
            out += [f"| (matgl: Atoms2Graph.get_graph) | {fmt_time(t_nl)} |",
                    f"| (matgl: bond lengths + create_line_graph) | {fmt_time(t_lg)} |", ""]
        if not on_cuda(args.device):
            atoms = silicon(max(profile_sizes), seed=max(profile_sizes))
            for impl in impls["Si"]:
                out += [f"### torch.profiler, one E+F call, {impl.name}, Si {len(atoms)} (self CPU time)", "", "```",
                        top_ops(impl, atoms).rstrip(), "```", ""]  # fmt: skip

    out.append(f"Total benchmark time: {time.perf_counter() - started:.0f} s.")
    text = "\n".join(out) + "\n"
    print(text)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text)


if __name__ == "__main__":
    main()
