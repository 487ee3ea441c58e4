"""The main job on the bundled water clusters, every model tested on the same held-out r2SCAN
clusters: multi-fidelity (all PBE + 10 % r2SCAN), single-fidelity (the same 10 % r2SCAN), and a
three-fidelity model that also sees the SCAN labels of the training geometries."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from .bundled import label_noise_line, water_clusters
from .evaluation import errors
from .recipes import m3gnet_potential
from .splits import paper_split
from .training import TrainConfig, train

TARGET = "r2SCAN"


def run_demo(out_dir: str | Path, epochs: int = 100, hifi_fraction: float = 0.1, batch_size: int = 8, seed: int = 0) -> dict:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    structures = water_clusters()
    split = paper_split(structures, lofi=["PBE", "SCAN"], hifi=TARGET, hifi_fraction=hifi_fraction, seed=seed)
    split.save(out_dir / "split.json")
    pick = lambda ids: [structures[k] for k in ids]  # noqa: E731
    lower, hifi, val, test = pick(split.lofi_train), pick(split.hifi_train), pick(split.validation), pick(split.test)
    pbe, scan = [s for s in lower if s.fidelity == "PBE"], [s for s in lower if s.fidelity == "SCAN"]
    elements = sorted({int(z) for s in structures for z in np.unique(s.numbers)})
    config = TrainConfig(max_epochs=epochs, batch_size=batch_size, monitor=TARGET, seed=seed)
    print(f"PBE train {len(pbe)}, SCAN train {len(scan)}, {TARGET} train {len(hifi)}, {TARGET} validation {len(val)}, {TARGET} test {len(test)}")

    models = {
        "mfi": (["PBE", TARGET], pbe + hifi, f"mfi: {len(pbe)} PBE + {len(hifi)} {TARGET}"),
        "1fi": ([TARGET], hifi, f"1fi: {len(hifi)} {TARGET}"),
        "mfi3": (["PBE", "SCAN", TARGET], pbe + scan + hifi, f"mfi3: + {len(scan)} SCAN"),
    }
    results = {}
    for name, (fidelities, train_set, _) in models.items():
        potential = m3gnet_potential(elements, fidelities, seed=seed)
        print(f"{name}: {potential.describe()}")
        fit = train(potential, train_set, val, config, out_dir / name)
        results[name] = {**errors(potential, test, TARGET), "best_epoch": fit.best_epoch, "n_train": len(train_set), "fidelities": fidelities}

    (out_dir / "results.json").write_text(json.dumps(results, indent=1))
    print(f"\n{TARGET} test set ({results['mfi']['n_structures']} clusters), model files in {out_dir}/")
    print(f"{'model':<34}{'E MAE (meV/atom)':>18}{'F MAE (meV/A)':>16}")
    for name, r in results.items():
        print(f"{models[name][2]:<34}{1000 * r['energy_mae_per_atom']:>18.2f}{1000 * r['force_mae']:>16.1f}")
    print(f"\nLabel noise, the floor under these errors: {label_noise_line(TARGET)}")
    return results
