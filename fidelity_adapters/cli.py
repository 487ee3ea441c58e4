"""Command line: `fidelity-adapters demo | prepare | train | evaluate | compare | info | eos | relax | md | rdf | label |
pretrained | finetune | export | lammps-plugin | lammps`, each with --threads."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

REFIT_HELP = "after training, refit each model's reference energies around its network on its training set"


def _demo(args) -> None:
    from .demo import run_demo

    run_demo(args.out, epochs=args.epochs, hifi_fraction=args.hifi_fraction, batch_size=args.batch_size, seed=args.seed)


def _label(args) -> int:
    from dataclasses import replace

    from .data import stream_frames
    from .pyscf_labeller import check_convergence, finer, label_into, level_of

    level = level_of(args.fidelity)
    overrides = {"grid_level": args.grid, "basis": args.basis, "grid_response": args.grid_response}
    level = replace(level, **{k: v for k, v in overrides.items() if v is not None})
    frames = []
    for index, atoms in stream_frames(Path(args.data), every=1, limit=None):
        atoms.info.setdefault("struct_id", index)
        frames.append(atoms)
    if not frames:
        raise ValueError(f"{args.data}: no structures")
    if args.check_convergence:
        rng = np.random.default_rng(args.seed)
        picked = np.sort(rng.choice(len(frames), min(args.sample, len(frames)), replace=False))
        check = check_convergence([frames[k] for k in picked], args.fidelity, level, finer(level, args.reference_grid))
        print(check.report())
        return 0 if check.passed else 1
    if args.out is None:
        raise ValueError("label needs --out (or --check-convergence)")
    print(f"labelling {len(frames)} structures of {args.data} at {level.describe()} into {args.out}")
    label_into(frames, args.fidelity, args.out, level)
    return 0


def _train(args) -> None:
    from dataclasses import asdict

    from .data import fidelities_of
    from .distributed import world
    from .precision import network_dtype
    from .recipes import m3gnet_potential
    from .serialization import save_potential
    from .shards import ShardedStructures, is_prepared
    from .splits import validation_split
    from .training import TrainConfig, train

    if any(is_prepared(path) for path in args.data):  # on disk, streamed (`prepare`)
        if len(args.data) > 1 or args.every != 1 or args.limit or args.data_fidelity:
            raise ValueError("prepared shards are trained on alone, as prepared: give one directory, and --every, "
                             "--limit or --data-fidelity to `prepare` instead")  # fmt: skip
        structures = ShardedStructures(args.data[0])
    else:
        structures = list(_frames(args))
    if not structures:
        raise ValueError("no structures in the given data files")
    found = fidelities_of(structures)
    fidelities = args.fidelities or found
    unknown = sorted(set(found) - set(fidelities))
    if unknown:
        raise ValueError(f"data has fidelities {unknown} that are not in --fidelities {fidelities}")
    if args.target is not None and args.target not in fidelities:
        raise ValueError(f"--target {args.target!r} is not one of the fidelities {fidelities}")
    _check_val_fraction(args.val_fraction)
    for name in fidelities:
        if name not in found:
            raise ValueError(f"no structures of fidelity {name!r} in the data (found {found})")
    train_ids, val_ids = validation_split(structures, args.val_fraction, args.seed, must_validate=args.target)
    if isinstance(structures, ShardedStructures):
        train_set, val_set = structures.subset(train_ids), structures.subset(val_ids)
    else:
        train_set, val_set = [structures[k] for k in train_ids], [structures[k] for k in val_ids]
    elements = sorted({int(z) for s in structures for z in np.unique(s.numbers)})
    potential = m3gnet_potential(elements, fidelities, seed=args.seed).to(_device(args.device), network_dtype(args.precision))
    print(potential.describe())
    config = TrainConfig(
        max_epochs=args.epochs, learning_rate=args.lr, batch_size=args.batch_size, max_atoms=args.max_atoms,
        force_weight=args.force_weight, stress_weight=args.stress_weight, patience=args.patience, seed=args.seed, monitor=args.target,
        refit_references=args.refit_references, workers=args.workers,
        sampling_ratios=dict(args.sampling_ratios) if args.sampling_ratios else None, sampling_temperature=args.sampling_temperature,
    )  # fmt: skip
    result = train(potential, train_set, val_set, config, out_dir=args.out)
    if world().is_main:  # under torchrun, rank 0 writes
        trained = {"best_epoch": result.best_epoch, "training": asdict(config), "data": [str(p) for p in args.data],
                   "val_fraction": args.val_fraction}  # fmt: skip
        save_potential(potential, Path(args.out) / "model.safetensors", extra=trained)
    print(f"best epoch {result.best_epoch}, validation loss {result.best_val_loss:.5g}; model: {Path(args.out) / 'model.safetensors'}")


def _frames(args):
    """The frames of the extxyz files args.data, one at a time, as --data-fidelity, --every and --limit say."""
    import itertools

    from .data import iter_structures

    return itertools.chain.from_iterable(
        iter_structures(path, default_fidelity=args.data_fidelity, every=args.every, limit=args.limit) for path in args.data
    )


def _prepare(args) -> None:
    from .shards import write_shards

    out = write_shards(_frames(args), args.out, shard_size=args.shard_size, sources=args.data)
    manifest = json.loads((out / "manifest.json").read_text())
    print(f"{manifest['n_structures']} structures ({manifest['fidelities']}) in {len(manifest['shards'])} shards: {out}")


def _evaluate(args) -> None:
    from .data import read_structures
    from .evaluation import errors

    potential = _load_model(args)
    structures = read_structures(args.data, default_fidelity=args.data_fidelity)
    result = errors(potential, structures, args.fidelity)
    if args.json:
        print(json.dumps({k: None if isinstance(v, float) and not np.isfinite(v) else v for k, v in result.items()}))
    else:
        print(f"fidelity {args.fidelity}: {result['n_structures']} structures")
        print(f"energy MAE {result['energy_mae_per_atom']:.5f} eV/atom, "
              f"bias (predicted - true) {result['energy_bias_per_atom']:+.5f} eV/atom")
        print(f"force MAE  {result['force_mae']:.5f} eV/A")


def _compare(args) -> None:
    from .compare import QUICK, CompareSettings, compare, settings_with

    settings = CompareSettings.from_yaml(args.config) if args.config else CompareSettings()
    if args.quick:
        settings = settings_with(settings, QUICK)
    flags = {
        "data": args.data or None, "lofi": args.lofi, "hifi": args.hifi, "strategies": args.strategies,
        "fractions": args.fractions, "seeds": args.seeds, "sampling": args.sampling, "every": args.every,
        "limit": args.limit, "geometries": args.geometries, "epochs": args.epochs, "batch_size": args.batch_size, "max_atoms": args.max_atoms, "freeze": args.freeze,
        "force_weight": args.force_weight, "backbone": args.backbone, "refit_references": args.refit_references,
        "pretrained": args.pretrained, "pretrained_base": args.pretrained_base,
    }  # fmt: skip
    settings = settings_with(settings, flags)
    report = compare(settings, args.out, command=" ".join(["fidelity-adapters", *sys.argv[1:]]))
    print(f"report: {report}")


def _load_model(args):
    """args.model on --device, in --precision's dtype (default: as saved, float32 for a
    pretrained one): a saved model file, or a pretrained model's name (`fidelity-adapters
    pretrained`) where no file of that name exists, so a foundation model runs without a save."""
    from .precision import network_dtype
    from .pretrained import REGISTRY, load_pretrained
    from .serialization import load_potential

    device = _device(args.device)
    if args.model in REGISTRY and not Path(args.model).exists():
        potential = load_pretrained(args.model).to(device)
    else:
        potential = load_potential(args.model, device=device)
    return potential if args.precision is None else potential.to(network_dtype(args.precision))


def _calculator(args, fidelity: str):
    from .calculator import FidelityCalculator

    return FidelityCalculator(_load_model(args), fidelity)


def _matmul_mode(args):
    """--precision tf32 holds for the whole command; float32 / float64 set the network's dtype
    where the command builds or loads it."""
    from contextlib import nullcontext

    from .precision import matmul_precision

    precision = getattr(args, "precision", None)
    return nullcontext() if precision is None else matmul_precision(precision, _device(args.device))


def _device(name: str):
    """--device as a torch.device (devices.parse_device); under torchrun, cuda is the rank's
    GPU (LOCAL_RANK)."""
    import torch

    from .devices import parse_device

    device = parse_device(name, "--device")
    if device.type == "cuda":
        if device.index is None:
            device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
        torch.cuda.set_device(device)  # the rank's GPU for NCCL
    return device


def _read_structure(path: str):
    from ase.io import read
    from ase.io.formats import UnknownFileTypeError

    try:
        return read(path)
    except (OSError, ValueError, StopIteration, UnknownFileTypeError) as error:  # an empty file: UnknownFileTypeError
        raise ValueError(f"{path}: cannot read a structure ({error or type(error).__name__})") from None


def _eos(args) -> None:
    from .physics.eos import equation_of_state, eos_table, plot_eos, silicon_polymorph

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.structure:
        structures = {Path(args.structure).stem: _read_structure(args.structure)}
        if not structures[Path(args.structure).stem].pbc.all():
            raise ValueError(f"{args.structure}: an equation of state needs a crystal periodic in all three directions")
    else:
        print(f"no structure given: the Si polymorphs {' '.join(args.polymorphs)} (--polymorphs, or a file with --structure)")
        structures = {name: silicon_polymorph(name) for name in args.polymorphs}
    results, rows = {}, []
    for fidelity in args.fidelity:
        calc = _calculator(args, fidelity)
        results[fidelity] = [
            equation_of_state(atoms, calc, name=name, volume_range=tuple(args.range), n_points=args.points)
            for name, atoms in structures.items()
        ]
        plot_eos(results[fidelity], out / f"eos_{fidelity}.png")
        rows += [{"fidelity": fidelity, "structure": r.name, "e0": r.e0, "v0": r.v0, "b_gpa": r.b_gpa} for r in results[fidelity]]
    reference = json.loads(Path(args.reference).read_text()) if args.reference else None
    table = eos_table(results, {k: tuple(v) for k, v in reference.items()} if reference else None)
    (out / "eos.md").write_text(table + "\n")
    (out / "eos.json").write_text(json.dumps(rows, indent=1))
    print(table)


NOT_CONVERGED = 3  # relax's exit status when it stopped at --steps (the last structure is written)


def _relax(args) -> int:
    from ase.io import write

    from .physics.relax import relax

    result = relax(_read_structure(args.structure), _calculator(args, args.fidelity), fmax=args.fmax, steps=args.steps,
                   relax_cell=not args.fixed_cell, trajectory=args.trajectory)  # fmt: skip
    write(args.out, result.atoms, format="extxyz")
    state = "converged" if result.converged else f"NOT converged in {result.steps} steps (fmax {args.fmax} eV/A not reached)"
    print(f"{state}: energy {result.energy:.6f} eV, max force {result.max_force:.4f} eV/A; written to {args.out}")
    return 0 if result.converged else NOT_CONVERGED


def _md(args) -> None:
    from .physics.md import run_md

    result = run_md(
        _read_structure(args.structure), _calculator(args, args.fidelity), ensemble=args.ensemble,
        temperature_K=args.temperature, timestep_fs=args.timestep, steps=args.steps, interval=args.interval,
        trajectory=args.out, seed=args.seed, thermostat=args.thermostat, pressure_gpa=args.pressure,
    )  # fmt: skip
    print(f"{result.n_steps} steps of {args.ensemble.upper()} at fidelity {args.fidelity}; trajectory {args.out}")
    volume = result.volume_per_atom[-1]
    volume_text = f", final volume {volume:.3f} A^3/atom" if np.isfinite(volume) else " (no volume: not periodic)"
    print(f"mean temperature {result.temperature_K.mean():.1f} K{volume_text}")
    if result.drift_mev_per_atom_per_ps is not None:
        print(f"energy drift {result.drift_mev_per_atom_per_ps:.4f} meV/atom/ps, "
              f"max deviation {result.max_deviation_mev_per_atom:.4f} meV/atom")  # fmt: skip


def _export(args) -> None:
    from .export import export_potential
    from .serialization import load_potential

    metadata = export_potential(load_potential(args.model), args.fidelity, args.out, format=args.format)
    print(f"exported {args.model} at fidelity {metadata['fidelity']} as {args.format} ({metadata['backbone']}, "
          f"elements {metadata['elements']}, cutoff {metadata['cutoff']} A) to {args.out}")  # fmt: skip


def _lammps_plugin(args) -> None:
    from .engines.lammps_plugin import STYLE, build_plugin

    library = build_plugin(args.out).resolve()
    print(f"built {library}\nin a LAMMPS input (units metal, serial), with a model exported with --format aotinductor:\n"
          f"  plugin load {library}\n  pair_style {STYLE} model.pt2 FIDELITY\n  pair_coeff * * ELEMENT_OF_TYPE_1 ...")


def _lammps(args) -> int:
    from .engines.lammps import LammpsError, run_input
    from .serialization import load_potential

    try:
        _, driver = run_input(args.input, load_potential(args.model), args.fidelity, args.elements, screen=not args.quiet)
    except LammpsError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(f"LAMMPS ran {args.input} with {args.model} at fidelity {args.fidelity}: {driver.calls} force calls")
    return 0


def _rdf(args) -> None:
    from ase.io import read

    from .physics import structure_analysis as analysis

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    try:
        frames = read(args.trajectory, index=":")  # once, for every analysis below
    except (OSError, ValueError, StopIteration) as error:
        raise ValueError(f"{args.trajectory}: cannot read a trajectory ({error})") from None
    r, g = analysis.radial_distribution(frames, rmax=args.rmax, nbins=args.bins, elements=args.elements)
    analysis.plot_rdf(r, g, out / "rdf.png")
    np.savetxt(out / "rdf.txt", np.column_stack([r, g]), header="r (A)  g(r)")
    print(f"first maximum of g(r): {r[np.argmax(g)]:.3f} A; files in {out}/")
    if args.angles:
        theta, p = analysis.angular_distribution(frames, center=args.angles[1], neighbor=args.angles[0],
                                                 cutoff=args.angle_cutoff)  # fmt: skip
        analysis.plot_angles(theta, p, out / "angles.png")
        np.savetxt(out / "angles.txt", np.column_stack([theta, p]), header="angle (deg)  density (1/deg)")
        print(f"most likely {'-'.join([args.angles[0], args.angles[1], args.angles[0]])} angle: {theta[np.argmax(p)]:.1f} deg")
    if args.coordination_cutoff:
        element, neighbor = args.elements or (None, None)
        histogram = analysis.coordination_numbers(frames, cutoff=args.coordination_cutoff, element=element, neighbor=neighbor)
        analysis.plot_coordination(histogram, out / "coordination.png")
        which = f" ({neighbor} around {element})" if args.elements else ""
        print(f"coordination numbers{which}: " + ", ".join(f"{n}: {f:.3f}" for n, f in sorted(histogram.items())))


def _info(args) -> None:
    from .serialization import read_metadata

    print(json.dumps(read_metadata(args.model), indent=1))


def _pretrained(args) -> None:
    from .pretrained import available, load_pretrained
    from .serialization import save_potential

    if args.name is None:
        for model, where, why in available():
            state = "available" if where is not None else "absent   "
            print(f"{model.name:38s} {state} fidelities {list(model.fidelities)}; {model.description} ({model.licence}); {why}")
        return
    if args.out is None:
        raise ValueError("give --out FILE.safetensors to save the pretrained model as a model file")
    potential = load_pretrained(args.name, add=args.add)
    save_potential(potential, args.out, extra={"pretrained": args.name})
    print(f"{potential.describe()}\nsaved to {args.out}")


def _named_value(text: str) -> tuple[str, float]:
    """NAME=VALUE on the command line (a fidelity and its share)."""
    name, _, value = text.rpartition("=")
    try:
        if name:
            return name, float(value)
    except ValueError:
        pass
    raise argparse.ArgumentTypeError(f"{text!r}: expected FIDELITY=NUMBER, e.g. SCAN=0.5")


def _check_val_fraction(value: float) -> None:
    if not 0 < value < 1:
        raise ValueError(f"--val-fraction {value}: must be between 0 and 1 (exclusive)")


def _default_replay(library: str, trainable: str, replay_data: list) -> str:
    """The replay that does something for this choice (given base-level data asks for "data",
    which finetune refuses where the base level is kept exactly)."""
    from .finetune import keeps_base_exactly

    if replay_data:
        return "data"
    return "none" if keeps_base_exactly(library, trainable) else "distill"


def _finetune(args) -> None:
    from .data import read_structures
    from .finetune import FinetuneConfig, finetune
    from .pretrained import entry
    from .training import TrainConfig, split_indices

    _check_val_fraction(args.val_fraction)
    base = entry(args.pretrained).level(args.base_fidelity, what="--base-fidelity")
    structures = [s for path in args.data for s in read_structures(path, limit=args.limit, default_fidelity=args.target)]
    replay = [s for path in args.replay_data for s in read_structures(path, default_fidelity=base)]
    other = sorted({s.fidelity for s in structures} - {args.target, base})
    if other:
        raise ValueError(f"data has fidelities {other}; fine-tuning uses --target {args.target!r} and base {base!r} only")
    replay += [s for s in structures if s.fidelity == base]  # base-level frames in the data are replay data
    target = [s for s in structures if s.fidelity == args.target]
    if len(target) < 2:
        raise ValueError(f"need at least 2 structures at the target {args.target!r} (found {len(target)})")
    val_ids, train_ids = split_indices(len(target), [args.val_fraction, 1 - args.val_fraction], args.seed)
    if len(val_ids) == 0:
        val_ids, train_ids = train_ids[:1], train_ids[1:]
    mode = args.replay or _default_replay(entry(args.pretrained).library, args.trainable, replay)
    config = FinetuneConfig(
        train=TrainConfig(max_epochs=args.epochs, learning_rate=args.lr, batch_size=args.batch_size, max_atoms=args.max_atoms,
                          force_weight=args.force_weight, patience=args.patience, seed=args.seed),
        replay=mode, replay_ratio=args.replay_ratio, replay_weight=args.replay_weight, rattle=args.rattle,
        trainable=args.trainable, rank=args.rank, radial=args.radial, self_connections=not args.no_self_connections,
        device=str(_device(args.device)),
    )  # fmt: skip
    result = finetune(
        args.pretrained, args.target, [target[k] for k in train_ids], [target[k] for k in val_ids], config,
        base_fidelity=base, replay_structures=replay if mode == "data" else (), out_dir=args.out,
    )  # fmt: skip
    report = result.report
    print(f"{args.pretrained} fine-tuned at {args.target} (base {base}, replay {mode}): {report['optimizer_steps']} steps, "
          f"{report['training_seconds']:.0f} s of training")  # fmt: skip
    for when in ("zero_shot", "before", "after"):
        for key, value in report[when].items():
            print(f"  {when:9s} {key:14s} E MAE {1000 * value['energy_mae_per_atom']:.2f} meV/atom, "
                  f"F MAE {1000 * value['force_mae']:.1f} meV/A ({value['n_structures']} structures)")  # fmt: skip
    print(f"model: {Path(args.out) / 'model.safetensors'}; report: {Path(args.out) / 'finetune_report.json'}")


def cpu_times(cpus: set[int]) -> dict[int, tuple[int, int]]:
    """{cpu: (all jiffies, idle + iowait jiffies)} of the given CPUs, from Linux's /proc/stat."""
    times = {}
    with open("/proc/stat") as stat:
        for line in stat:
            name, *fields = line.split()
            if name[:3] == "cpu" and name[3:].isdigit() and int(name[3:]) in cpus:
                values = [int(v) for v in fields[:8]]  # user nice system idle iowait irq softirq steal
                times[int(name[3:])] = (sum(values), values[3] + values[4])
    return times


def busy_cores(cpus: set[int], seconds: float = 0.3) -> float | None:
    """How many of `cpus` other processes keep busy now (this one sleeps while it looks);
    None where /proc/stat cannot say."""
    try:
        first = cpu_times(cpus)
        time.sleep(seconds)
        second = cpu_times(cpus)
    except (OSError, ValueError):
        return None
    spans = [(total - first[c][0], idle - first[c][1]) for c, (total, idle) in second.items() if c in first]
    spans = [(total, idle) for total, idle in spans if total > 0]
    return sum(1 - idle / total for total, idle in spans) if spans else None


def default_threads() -> int:
    """Torch threads when --threads is not given: the cores this process may use, less those
    other processes keep busy. Torch's own default, every core, made the main job 10x slower
    beside one other busy process. Busy means busy now: the 1-minute load average still
    counted the pip install that the README's first command runs just before the demo, and
    gave the demo one thread of two."""
    cpus = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else set(range(os.cpu_count() or 1))
    busy = busy_cores(cpus)
    if busy is None:  # no /proc/stat (macOS): the load average
        busy = os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0
    return max(1, len(cpus) - round(busy))


def set_threads(requested: int | None) -> str:
    """Set torch's thread count; returns the line that says how it was chosen."""
    import torch

    if requested is not None:
        if requested < 1:
            raise ValueError(f"--threads must be >= 1, not {requested}")
        how = "--threads"
    elif os.environ.get("OMP_NUM_THREADS"):
        requested, how = torch.get_num_threads(), "OMP_NUM_THREADS"
    else:
        requested, how = default_threads(), "the free cores; --threads N to change"
    torch.set_num_threads(requested)
    return f"torch threads: {requested} ({how})"


THREADS = argparse.ArgumentParser(add_help=False)
THREADS.add_argument("--threads", type=int, help="torch threads (default: the cores not busy with other processes)")


def _command(sub, name: str, help: str) -> argparse.ArgumentParser:
    return sub.add_parser(name, help=help, parents=[THREADS])


def _device_option(command: argparse.ArgumentParser, precision: str | None = None) -> None:
    """--device and --precision (`precision`: the default; None: as the model was saved)."""
    command.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (neighbour lists stay on the CPU)")
    command.add_argument("--precision", default=precision, choices=["float32", "float64", "tf32"],
                         help="the network's dtype, or tf32: float32 with TF32 matmuls (CUDA, Ampere or newer); geometry and "
                              "references stay exact; errors of each: docs/precision.md (default: "
                              + (precision or "as the model was saved") + ")")  # fmt: skip


def _schedule_options(command: argparse.ArgumentParser, epochs: int, lr: float, batch_size: int, val_fraction: float) -> None:
    """The training schedule's options of `train` and `finetune` (their defaults differ)."""
    command.add_argument("--epochs", type=int, default=epochs)
    command.add_argument("--lr", type=float, default=lr)
    command.add_argument("--batch-size", type=int, default=batch_size)
    command.add_argument("--max-atoms", type=int, help="atoms per batch at most (a larger structure trains alone); "
                                                       "memory grows with a batch's atoms (default: no limit)")
    command.add_argument("--force-weight", type=float, default=1.0)
    command.add_argument("--patience", type=int, default=200)
    command.add_argument("--val-fraction", type=float, default=val_fraction)
    command.add_argument("--seed", type=int, default=0)


def _data_fidelity_option(command: argparse.ArgumentParser) -> None:
    command.add_argument("--data-fidelity", help="fidelity of the frames without info['fidelity'] (frames that name one keep it)")


def _frame_options(command: argparse.ArgumentParser) -> None:
    """How a command that reads extxyz files picks their frames (`_frames`)."""
    _data_fidelity_option(command)
    command.add_argument("--every", type=int, default=1, help="keep every n-th frame of each file")
    command.add_argument("--limit", type=int, help="at most this many frames from each file")


MODEL_HELP = "a saved model file, or a pretrained model's name (fidelity-adapters pretrained lists them)"


def _simulation_parser(sub, name: str, help: str) -> argparse.ArgumentParser:
    """A command that runs a saved or pretrained model on one structure at one (required) fidelity."""
    command = _command(sub, name, help)
    command.add_argument("model", help=MODEL_HELP)
    command.add_argument("structure")
    command.add_argument("--fidelity", required=True)
    _device_option(command)
    return command


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="fidelity-adapters", description="Multi-fidelity interatomic potentials.")
    sub = top.add_subparsers(dest="command", required=True)

    demo = _command(sub, "demo", help="mfi vs 1fi (and a 3-fidelity model) M3GNet on the bundled PBE/r2SCAN/SCAN water clusters")
    demo.add_argument("--out", default="runs/demo")
    demo.add_argument("--epochs", type=int, default=100)
    demo.add_argument("--hifi-fraction", type=float, default=0.1)
    demo.add_argument("--batch-size", type=int, default=8)
    demo.add_argument("--seed", type=int, default=0)
    demo.set_defaults(func=_demo)

    prep = _command(sub, "prepare", help="write extxyz files as on-disk shards that `train` streams (memory flat in the data size)")
    prep.add_argument("data", nargs="+", help="extxyz files (plain or .gz), read one frame at a time")
    prep.add_argument("--out", required=True, help="new directory for the shards and their manifest.json")
    _frame_options(prep)
    prep.add_argument("--shard-size", type=int, default=10000, help="structures per shard file")
    prep.set_defaults(func=_prepare)

    tr = _command(sub, "train", help="train an M3GNet potential on extxyz files of one or more fidelities")
    tr.add_argument("data", nargs="+", help="extxyz files (plain or .gz; fidelity from info['fidelity']), or one `prepare`d directory")
    tr.add_argument("--out", required=True, help="output directory (checkpoint, best model; resumes if present)")
    tr.add_argument("--fidelities", nargs="+", help="fidelity names in model order (default: as found in the data)")
    tr.add_argument("--target", help="fidelity whose validation loss picks the best epoch")
    _frame_options(tr)
    _schedule_options(tr, epochs=100, lr=1e-3, batch_size=16, val_fraction=0.1)
    tr.add_argument("--stress-weight", type=float, default=0.0)
    tr.add_argument("--refit-references", action="store_true", help=REFIT_HELP)
    tr.add_argument("--workers", type=int, default=0, help="DataLoader processes building the graphs of prepared (on-disk) data")
    tr.add_argument("--sampling-ratios", nargs="+", type=_named_value, metavar="FIDELITY=SHARE",
                    help="each fidelity's share of an epoch's draws, e.g. PBE=1 SCAN=1 (default: as many as it has)")
    tr.add_argument("--sampling-temperature", type=float, help="or shares proportional to n_fidelity^(1/T) (T=1: proportional)")
    _device_option(tr, precision="float32")
    tr.set_defaults(func=_train)

    ev = _command(sub, "evaluate", help="energy and force MAE of a saved model at one fidelity")
    ev.add_argument("model", help=MODEL_HELP)
    ev.add_argument("data")
    ev.add_argument("--fidelity", required=True)
    ev.add_argument("--json", action="store_true", help="print one JSON object")
    _data_fidelity_option(ev)
    _device_option(ev)
    ev.set_defaults(func=_evaluate)

    cmp = _command(sub, "compare", help="mfi vs single / transfer / delta / multihead (and from a foundation model) over hifi fractions and seeds")
    cmp.add_argument("data", nargs="*", help="extxyz files (default: the bundled PBE/r2SCAN/SCAN water clusters)")
    cmp.add_argument("--config", help="YAML file of settings (keys as in fidelity_adapters.compare.CompareSettings)")
    cmp.add_argument("--out", default="runs/compare", help="sweep directory; a half-finished sweep there resumes")
    cmp.add_argument("--lofi", nargs="+", help="low fidelity name(s)")
    cmp.add_argument("--hifi", help="target fidelity name")
    cmp.add_argument("--strategies", nargs="+", help="any of mfi single transfer delta multihead; zero-shot ft-mfi ft-transfer ft-delta with --pretrained")
    cmp.add_argument("--pretrained", help="foundation model the zero-shot / ft-* strategies start from (see `fidelity-adapters pretrained`)")
    cmp.add_argument("--pretrained-base", help="the foundation model's own level the target starts from (default: its first)")
    cmp.add_argument("--fractions", nargs="+", type=float, help="high-fidelity training fractions, e.g. 0.05 0.1 0.2")
    cmp.add_argument("--seeds", nargs="+", type=int)
    cmp.add_argument("--sampling", nargs="+", help="any of random direct narrow")
    cmp.add_argument("--freeze", nargs="+", help="transfer learning: parameter-name prefixes to freeze")
    cmp.add_argument("--every", type=int, help="keep every n-th frame of each file")
    cmp.add_argument("--limit", type=int, help="at most this many frames per file")
    cmp.add_argument("--geometries", type=int, help="at most this many geometries (struct_id), all their labels kept")
    cmp.add_argument("--epochs", type=int)
    cmp.add_argument("--batch-size", type=int)
    cmp.add_argument("--max-atoms", type=int, help="atoms per training batch at most (default: no limit)")
    cmp.add_argument("--force-weight", type=float, help="weight of the force term (0: energies only)")
    cmp.add_argument("--backbone", help="M3GNet (default), MACEStyle or NequIPStyle")
    cmp.add_argument("--refit-references", action="store_true", default=None, help=REFIT_HELP)
    cmp.add_argument("--quick", action="store_true", help="tiny models, 2 epochs, one seed: a smoke run")
    cmp.set_defaults(func=_compare)

    eos = _command(sub, "eos", help="Murnaghan equation of state per fidelity (built-in Si polymorphs or a structure)")
    eos.add_argument("model", help=MODEL_HELP)
    eos.add_argument("--fidelity", nargs="+", required=True, help="one or more fidelity names of the model")
    eos.add_argument("--structure", help="structure file (default: the Si polymorphs)")
    eos.add_argument("--polymorphs", nargs="+", default=["diamond", "beta-Sn", "fcc", "sh"])
    eos.add_argument("--points", type=int, default=11)
    eos.add_argument("--range", nargs=2, type=float, default=[0.85, 1.15], help="relative volume range")
    _device_option(eos)
    eos.add_argument("--reference", help="JSON {structure: [E0 eV/atom, V0 A^3/atom, B GPa]} to compare with")
    eos.add_argument("--out", default="runs/eos")
    eos.set_defaults(func=_eos)

    rel = _simulation_parser(sub, "relax", "relax positions (and cell) at one fidelity; exit status 3: not converged in --steps (the last structure is written)")
    rel.add_argument("--fmax", type=float, default=0.05, help="force threshold (eV/A)")
    rel.add_argument("--steps", type=int, default=500)
    rel.add_argument("--fixed-cell", action="store_true")
    rel.add_argument("--trajectory", help="extxyz file of the optimisation steps")
    rel.add_argument("--out", default="relaxed.extxyz")
    rel.set_defaults(func=_relax)

    md = _simulation_parser(sub, "md", "NVE / NVT / NPT molecular dynamics at one fidelity")
    md.add_argument("--ensemble", default="nve", choices=["nve", "nvt", "npt"])
    md.add_argument("--thermostat", default="langevin")
    md.add_argument("--temperature", type=float, default=300.0, help="K")
    md.add_argument("--pressure", type=float, default=0.0, help="GPa (NPT)")
    md.add_argument("--timestep", type=float, default=1.0, help="fs")
    md.add_argument("--steps", type=int, default=1000)
    md.add_argument("--interval", type=int, default=10, help="write every n-th step")
    md.add_argument("--seed", type=int, default=0)
    md.add_argument("--out", default="md.extxyz", help="trajectory (extxyz)")
    md.set_defaults(func=_md)

    exp = _command(sub, "export", help="write a saved model at one fidelity as a .pt2 file that needs torch only")
    exp.add_argument("model")
    exp.add_argument("--fidelity", required=True)
    exp.add_argument("--out", required=True, help="output file (.pt2)")
    exp.add_argument("--format", default="export", choices=["export", "aotinductor"],
                     help="export: a torch.export program (Python); aotinductor: compiled C++ (LAMMPS pair style "
                          "fidelity/aoti, libtorch), about a minute to compile")  # fmt: skip
    exp.set_defaults(func=_export)

    plug = _command(sub, "lammps-plugin", help="compile the LAMMPS pair style fidelity/aoti for this LAMMPS and torch")
    plug.add_argument("--out", help="folder for the plugin library (default: ~/.cache/fidelity_adapters/lammps_plugin)")
    plug.set_defaults(func=_lammps_plugin)

    lmp = _command(sub, "lammps", help="run a LAMMPS input file (units metal, serial) with a saved model at one fidelity")
    lmp.add_argument("model")
    lmp.add_argument("input", help="LAMMPS input script; the model is installed (fix external) before its first run/minimize")
    lmp.add_argument("--fidelity", required=True)
    lmp.add_argument("--elements", nargs="+", required=True, help="element of each atom type, in type order (e.g. O H)")
    lmp.add_argument("--quiet", action="store_true", help="no LAMMPS screen output")
    lmp.set_defaults(func=_lammps)

    rdf = _command(sub, "rdf", help="radial / angular distribution and coordination numbers of a trajectory")
    rdf.add_argument("trajectory")
    rdf.add_argument("--rmax", type=float, default=6.0)
    rdf.add_argument("--bins", type=int, default=200)
    rdf.add_argument("--elements", nargs=2, metavar=("CENTER", "NEIGHBOR"), help="partial g(r) and coordination, e.g. O H")
    rdf.add_argument("--angles", nargs=2, metavar=("NEIGHBOR", "CENTER"), help="angle distribution, e.g. O O for O-O-O")
    rdf.add_argument("--angle-cutoff", type=float, default=3.3)
    rdf.add_argument("--coordination-cutoff", type=float, help="coordination-number histogram with this cutoff (A)")
    rdf.add_argument("--out", default="runs/rdf")
    rdf.set_defaults(func=_rdf)

    pre = _command(sub, "pretrained", help="list the pretrained potentials on this machine, or save one as a model file")
    pre.add_argument("name", nargs="?", help="a name from the list, e.g. matgl:M3GNet-MatPES-PBE-v2025.1")
    pre.add_argument("--add", nargs="+", default=[], metavar="FIDELITY", help="new fidelities, each starting as the base one")
    pre.add_argument("--out", help="model file to write (.safetensors)")
    pre.set_defaults(func=_pretrained)

    ft = _command(sub, "finetune", help="fine-tune a pretrained potential at a new fidelity, with replay of its own level")
    ft.add_argument("data", nargs="+", help="extxyz files at the target level (frames without info['fidelity'] count as target)")
    ft.add_argument("--from", dest="pretrained", required=True, help="a name from 'fidelity-adapters pretrained'")
    ft.add_argument("--target", required=True, help="fidelity to fine-tune (added beside the base if new)")
    ft.add_argument("--base-fidelity", help="the pretrained level to keep (default: the model's first)")
    ft.add_argument("--out", required=True)
    ft.add_argument("--replay", choices=["data", "distill", "none"], help="default: data if base-level frames are given, else none for lowrank-target or a SevenNet adapter, distill otherwise")
    ft.add_argument("--replay-data", nargs="+", default=[], help="extxyz files at the base level")
    ft.add_argument("--replay-ratio", type=float, default=1.0, help="replay structures per target training structure")
    ft.add_argument("--replay-weight", type=float, default=1.0, help="loss weight of the replay structures")
    ft.add_argument("--rattle", type=float, default=0.05, help="A; displacement of self-distillation copies")
    ft.add_argument("--trainable", choices=["all", "adapter", "lowrank", "lowrank-target"], default="all",
                    help="all; adapter (M3GNet: state path + readout; SevenNet: lowrank-target); lowrank (shared, merged); "
                         "lowrank-target (the target's own update, the base level kept exactly)")
    ft.add_argument("--rank", type=int, default=8, help="rank of the low-rank updates (lowrank, lowrank-target, or adapter on a SevenNet)")
    ft.add_argument("--radial", action="store_true", help="a SevenNet's target update reaches its radial networks too (adapter, lowrank-target)")
    ft.add_argument("--no-self-connections", action="store_true",
                    help="a SevenNet's target update leaves its skip paths' self-connections out (as measured before 2026-12-03)")
    _schedule_options(ft, epochs=20, lr=1e-4, batch_size=4, val_fraction=0.2)
    ft.add_argument("--limit", type=int, help="read at most this many frames per data file")
    ft.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (neighbour lists stay on the CPU)")
    ft.set_defaults(func=_finetune)

    lab = _command(sub, "label", help="DFT labels (PySCF) for molecules and clusters at a named fidelity, or a check that they are converged")
    lab.add_argument("data", help="extxyz file (plain or .gz) of molecules or clusters")
    lab.add_argument("--fidelity", required=True, help="PBE, r2SCAN or SCAN (settings: pyscf_labeller.LEVELS)")
    lab.add_argument("--out", help="extxyz file to append labels to; structures already in it are skipped")
    lab.add_argument("--check-convergence", action="store_true", help="relabel a sample on a finer grid with grid response and compare")
    lab.add_argument("--sample", type=int, default=3, help="structures in the convergence check")
    lab.add_argument("--reference-grid", type=int, default=8, help="grid level of the check's reference")
    lab.add_argument("--grid", type=int, help="override the fidelity's grid level")
    lab.add_argument("--basis", help="override the fidelity's basis")
    lab.add_argument("--grid-response", action=argparse.BooleanOptionalAction, default=None, help="override grid response in the forces")
    lab.add_argument("--seed", type=int, default=0)
    lab.set_defaults(func=_label)

    info = _command(sub, "info", help="print a saved model's metadata")
    info.add_argument("model")
    info.set_defaults(func=_info)
    return top


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    rank = int(os.environ.get("RANK", "0"))
    if rank > 0:  # under torchrun, rank 0 alone reports (errors still show)
        sys.stdout = open(os.devnull, "w")
    try:
        if args.command != "info":
            threads = set_threads(args.threads)
            if rank == 0:
                print(threads, file=sys.stderr)
        with _matmul_mode(args):
            code = args.func(args)
    except (ValueError, KeyError, OSError) as error:  # OSError: unreadable input, read-only or full output
        print(f"error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        resumable = args.command in ("train", "compare")
        print("interrupted" + (f"; the same command resumes from {args.out}" if resumable else ""), file=sys.stderr)
        return 130
    return code or 0


if __name__ == "__main__":
    sys.exit(main())
