"""Energies, forces and stresses of structures by matgl 2.0.4's own PESCalculator: the
reference that our import of matgl's M3GNet weights is checked against (matgl_check.py runs
it). It runs in the reference environment of shared/pretrained/README.md (matgl 2.0.4, dgl
2.1.0, torch 2.2.1), which cannot share an environment with this project: a script, not a
module of the package; it imports only matgl and ase.

    ref/bin/python reference_matgl.py MODEL_FOLDER structures.extxyz out.json [--float64] [--three-body-first]

--three-body-first orders each structure's neighbour pairs so that those within the
three-body cutoff come first. matgl 2.0.4's ThreeBodyInteractions indexes the full graph's
edges (end atoms, cutoff weights, the sum into bonds) with the ids of its pruned three-body
graph; the two agree only when the pruned edges are the first ones. Stock matgl therefore
depends on the order of its neighbour list (its energy changes when the atoms are permuted);
with the option it computes M3GNet as written, which is what our import computes.
"""

import argparse
import json
import os

os.environ.setdefault("MATGL_BACKEND", "DGL")

import ase.io  # noqa: E402
import matgl  # noqa: E402
import matgl.ext._ase_dgl as ase_dgl  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from matgl.ext.ase import PESCalculator  # noqa: E402


def three_body_first(three_body_cutoff, find_points_in_spheres):
    """find_points_in_spheres with the pairs within the three-body cutoff moved first (stable)."""

    def ordered(*args, **kwargs):
        src, dst, images, distances = find_points_in_spheres(*args, **kwargs)
        order = np.argsort(distances > three_body_cutoff, kind="stable")
        return src[order], dst[order], images[order], distances[order]

    return ordered


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("model")
    parser.add_argument("structures")
    parser.add_argument("out")
    parser.add_argument("--float64", action="store_true")
    parser.add_argument("--three-body-first", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(1)
    if args.float64:
        matgl.set_default_dtype("float", 64)
    potential = matgl.load_model(args.model)
    if args.float64:
        potential = potential.double()
    if args.three_body_first:  # periodic cells only: matgl builds molecules' graphs otherwise, in index order
        ase_dgl.find_points_in_spheres = three_body_first(potential.model.threebody_cutoff, ase_dgl.find_points_in_spheres)
    calculator = PESCalculator(potential, stress_unit="eV/A3")
    results = []
    for atoms in ase.io.read(args.structures, index=":"):
        atoms.calc = calculator
        results.append({
            "energy": float(atoms.get_potential_energy()),
            "forces": atoms.get_forces().tolist(),
            "stress": atoms.get_stress(voigt=False).tolist() if atoms.pbc.all() else None,
        })  # fmt: skip
    with open(args.out, "w") as handle:
        json.dump({"matgl": matgl.__version__, "torch": torch.__version__, "float64": args.float64, "three_body_first": args.three_body_first, "results": results}, handle)


if __name__ == "__main__":
    main()
