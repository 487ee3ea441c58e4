"""Equations of state against an exact answer: Stillinger-Weber (low) -> Tersoff-type (high) silicon.

Both levels are classical potentials (matscipy), so the high level's equation of state of
every polymorph is known exactly. An mfi model (all SW + a fraction of Tersoff) and a 1fi model
(the same Tersoff structures only) are trained on the paper's split, and their Murnaghan
E0, V0, B at the Tersoff fidelity are compared with the exact Tersoff values, in the format of
Ko & Ong's Table 1.

    pip install -e '.[classical]'
    python examples/si_sw_tersoff_eos.py --structures 200 --epochs 100 --out runs/si_eos
"""

import argparse
import json
from pathlib import Path

from fidelity_adapters import FidelityCalculator, TrainConfig, errors, m3gnet_potential, paper_split, train
from fidelity_adapters.classical_silicon import calculator, silicon_ladder
from fidelity_adapters.physics.eos import SI_POLYMORPHS, eos_table, equation_of_state, plot_eos, silicon_polymorph


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--structures", type=int, default=200)
    parser.add_argument("--hifi-fraction", type=float, default=0.1)
    parser.add_argument("--epochs", type=int, default=100)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--polymorphs", nargs="+", default=list(SI_POLYMORPHS), help="phases to sample and to fit")
    parser.add_argument("--out", type=Path, default=Path("runs/si_eos"))
    args = parser.parse_args()

    structures = silicon_ladder(args.structures, seed=args.seed, polymorphs=tuple(args.polymorphs))
    split = paper_split(structures, "SW", "Tersoff", hifi_fraction=args.hifi_fraction, seed=args.seed)
    args.out.mkdir(parents=True, exist_ok=True)
    split.save(args.out / "split.json")
    pick = lambda ids: [structures[k] for k in ids]  # noqa: E731
    print(f"SW train {len(split.lofi_train)}, Tersoff train {len(split.hifi_train)}, Tersoff test {len(split.test)}")

    config = TrainConfig(max_epochs=args.epochs, batch_size=args.batch_size, monitor="Tersoff", seed=args.seed)
    calculators = {"exact Tersoff": calculator("Tersoff"), "exact SW": calculator("SW")}
    test_errors = {}
    for name, fidelities, train_set in (
        ("mfi", ["SW", "Tersoff"], pick(split.lofi_train) + pick(split.hifi_train)),
        ("1fi", ["Tersoff"], pick(split.hifi_train)),
    ):
        potential = m3gnet_potential(["Si"], fidelities, seed=args.seed)
        train(potential, train_set, pick(split.validation), config, args.out / name)
        test_errors[name] = errors(potential, pick(split.test), "Tersoff")
        calculators[f"{name} at Tersoff"] = FidelityCalculator(potential, "Tersoff")

    results, failures = {}, []
    for label, calc in calculators.items():
        results[label] = []
        for phase in args.polymorphs:
            try:
                results[label].append(equation_of_state(silicon_polymorph(phase), calc, name=phase))
            except ValueError as error:  # no minimum in the scanned range: report it, keep going
                failures.append(f"{label}, {phase}: {error}")
        if results[label]:
            plot_eos(results[label], args.out / f"eos_{label.replace(' ', '_')}.png")
    exact = {r.name: (r.e0, r.v0, r.b_gpa) for r in results["exact Tersoff"]}
    table = eos_table(results, reference=exact)
    print(table)
    for failure in failures:
        print(f"no equation of state for {failure}")
    for name, e in test_errors.items():
        print(f"{name}: Tersoff test E MAE {1000 * e['energy_mae_per_atom']:.2f} meV/atom, F MAE {1000 * e['force_mae']:.1f} meV/A")
    rows = {label: [{"name": r.name, "e0": r.e0, "v0": r.v0, "b_gpa": r.b_gpa} for r in rs] for label, rs in results.items()}
    (args.out / "eos.json").write_text(json.dumps({"eos": rows, "test_errors": test_errors}, indent=1, default=float))
    (args.out / "eos.md").write_text(table + "\n" + "".join(f"\n- no equation of state for {f}" for f in failures) + "\n")


if __name__ == "__main__":
    main()
