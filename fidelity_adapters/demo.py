"""The main job: multi-fidelity (all PBE + 10 % SCAN) vs single-fidelity (the same 10 % SCAN)
M3GNet on the bundled water clusters, compared on the same held-out SCAN test set."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from .bundled import water_clusters
from .evaluation import errors
from .recipes import m3gnet_potential
from .splits import paper_split
from .training import TrainConfig, train


def run_demo(out_dir: str | Path, epochs: int = 100, hifi_fraction: float = 0.1, batch_size: int = 8, seed: int = 0) -> dict:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    structures = water_clusters()
    split = paper_split(structures, lofi="PBE", hifi="SCAN", hifi_fraction=hifi_fraction, seed=seed)
    split.save(out_dir / "split.json")
    pick = lambda ids: [structures[k] for k in ids]  # noqa: E731
    lofi, hifi, val, test = pick(split.lofi_train), pick(split.hifi_train), pick(split.validation), pick(split.test)
    elements = sorted({int(z) for s in structures for z in np.unique(s.numbers)})
    config = TrainConfig(max_epochs=epochs, batch_size=batch_size, monitor="SCAN", seed=seed)
    print(f"PBE train {len(lofi)}, SCAN train {len(hifi)}, SCAN validation {len(val)}, SCAN test {len(test)}")

    results = {}
    for name, fidelities, train_set in (("mfi", ["PBE", "SCAN"], lofi + hifi), ("1fi", ["SCAN"], hifi)):
        potential = m3gnet_potential(elements, fidelities, seed=seed)
        print(f"{name}: {potential.describe()}")
        fit = train(potential, train_set, val, config, out_dir / name)
        results[name] = {**errors(potential, test, "SCAN"), "best_epoch": fit.best_epoch, "n_train": len(train_set)}

    (out_dir / "results.json").write_text(json.dumps(results, indent=1))
    print(f"\nSCAN test set ({results['mfi']['n_structures']} clusters), model files in {out_dir}/")
    print(f"{'model':<34}{'E MAE (meV/atom)':>18}{'F MAE (meV/A)':>16}")
    labels = {"mfi": f"mfi: {len(lofi)} PBE + {len(hifi)} SCAN", "1fi": f"1fi: {len(hifi)} SCAN"}
    for name, r in results.items():
        print(f"{labels[name]:<34}{1000 * r['energy_mae_per_atom']:>18.2f}{1000 * r['force_mae']:>16.1f}")
    return results
