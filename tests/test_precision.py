"""--precision: float64 and float32 networks, TF32 matmuls on CUDA, and geometry that no
reduced-precision matmul mode can touch (TF32 emulated on the CPU)."""

import json

import numpy as np
import pytest
import torch
from torch_geometric.data import Batch

from conftest import small_potential, water_box
from fidelity_adapters import from_atoms
from fidelity_adapters.cli import main, parser
from fidelity_adapters.evaluation import errors
from fidelity_adapters.potential import edge_vectors_of, rows_times
from fidelity_adapters.precision import PRECISIONS, check_precision, emulated_tf32, matmul_precision
from fidelity_adapters.serialization import load_potential, save_potential


def _box_batch(potential):
    atoms = water_box(triclinic=True)
    atoms.info["fidelity"] = "SCAN"
    return Batch.from_data_list([potential.graph(from_atoms(atoms))])


def test_geometry_is_exact_under_tf32():
    """Edge vectors and strained positions are products and sums, never matmuls, so a mode
    that rounds matmul inputs to 10 bits leaves them bit for bit (with einsum they moved by
    about 1e-2 A)."""
    potential = small_potential(["H", "O"], ["PBE", "SCAN"], dtype=torch.float32)
    batch = _box_batch(potential)
    pos, cell = batch.pos.float(), batch.cell.float()
    deformation = torch.eye(3) + 1e-3 * torch.randn(1, 3, 3, generator=torch.Generator().manual_seed(0))
    exact = edge_vectors_of(batch, pos, cell), rows_times(pos, deformation[batch.batch]), rows_times(cell, deformation)
    with emulated_tf32():
        rounded_mode = edge_vectors_of(batch, pos, cell), rows_times(pos, deformation[batch.batch]), rows_times(cell, deformation)
        assert not torch.equal(pos @ cell[0], pos.double().matmul(cell[0].double()).float())  # the mode rounds matmuls
    for a, b in zip(exact, rounded_mode):
        assert torch.equal(a, b)
    torch.testing.assert_close(exact[1], torch.einsum("ni,nij->nj", pos, deformation[batch.batch]))
    torch.testing.assert_close(exact[2], torch.bmm(cell, deformation))


def test_emulated_tf32_changes_forces_little():
    """TF32 in the network changes forces (the mode takes effect) but by a small fraction of
    their size against float64, on a triclinic water box with stress."""
    reference = small_potential(["H", "O"], ["PBE", "SCAN"], dtype=torch.float64)
    single = small_potential(["H", "O"], ["PBE", "SCAN"], dtype=torch.float32)
    batch = _box_batch(reference)
    exact = reference(batch, stress=True)
    plain = single(batch, stress=True)
    with emulated_tf32():
        tf32 = single(batch, stress=True)
    scale = exact["forces"].abs().mean()
    plain_error = (plain["forces"].double() - exact["forces"]).abs().mean() / scale
    tf32_error = (tf32["forces"].double() - exact["forces"]).abs().mean() / scale
    assert tf32_error > 10 * plain_error
    assert tf32_error < 2e-3  # measured 3e-4 here; 3e-3 for MatPES-r2SCAN on liquid water (docs/precision.md)
    assert torch.allclose(tf32["stress"].double(), exact["stress"], rtol=1e-2, atol=1e-2 * exact["stress"].abs().max())


def test_precision_checks():
    assert set(PRECISIONS) == {"float32", "float64", "tf32"}
    commands = parser()._subparsers._group_actions[0].choices  # the command line offers exactly these
    for command in ("train", "evaluate", "eos", "relax", "md"):
        assert tuple(next(a for a in commands[command]._actions if a.dest == "precision").choices) == PRECISIONS, command
    with pytest.raises(ValueError, match="'bf16': give one of float32, float64, tf32"):
        check_precision("bf16")
    with pytest.raises(ValueError, match="tf32 is a CUDA tensor-core mode"):
        check_precision("tf32", "cpu")
    before = torch.backends.cuda.matmul.fp32_precision
    with matmul_precision("float64", "cpu"):
        assert torch.backends.cuda.matmul.fp32_precision == before


def test_precision_option_sets_the_networks_dtype(tmp_path, data_file, capsys):
    """train --precision float64 trains and saves a float64 network; evaluate --precision
    float64 runs a float32 file in float64; tf32 on the CPU and bf16 are refused."""
    run = tmp_path / "run64"
    assert main(["train", str(data_file), "--out", str(run), "--epochs", "1", "--batch-size", "4", "--val-fraction", "0.25",
                 "--precision", "float64"]) == 0
    capsys.readouterr()
    assert main(["info", str(run / "model.safetensors")]) == 0
    assert json.loads(capsys.readouterr().out)["dtype"] == "float64"

    model = tmp_path / "m32.safetensors"
    save_potential(small_potential(["H", "O"], ["SCAN", "PBE"], dtype=torch.float32), model)
    results = {}
    for precision in (None, "float64"):
        assert main(["evaluate", str(model), str(data_file), "--fidelity", "SCAN", "--json"] + ["--precision", precision] * bool(precision)) == 0
        results[precision] = json.loads(capsys.readouterr().out)["force_mae"]
    from fidelity_adapters.data import read_structures

    structures = read_structures(data_file)
    assert results["float64"] == errors(load_potential(model).double(), structures, "SCAN")["force_mae"]
    assert results[None] == errors(load_potential(model), structures, "SCAN")["force_mae"] != results["float64"]

    if not torch.cuda.is_available():
        assert main(["evaluate", str(model), str(data_file), "--fidelity", "SCAN", "--precision", "tf32"]) == 2
        assert "tf32 is a CUDA tensor-core mode" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["evaluate", str(model), str(data_file), "--fidelity", "SCAN", "--precision", "bf16"])


@pytest.mark.skipif(not torch.cuda.is_available() or torch.cuda.get_device_capability()[0] < 8, reason="needs an Ampere or newer GPU")
def test_tf32_on_cuda_takes_effect_and_forces_stay_close():
    """On the GPU, matmul_precision('tf32') changes forces from plain float32 (it takes effect),
    stays within 1 % of float64, and restores torch's setting."""
    reference = small_potential(["H", "O"], ["PBE", "SCAN"], dtype=torch.float64).cuda()
    single = small_potential(["H", "O"], ["PBE", "SCAN"], dtype=torch.float32).cuda()
    batch = _box_batch(reference)
    exact = reference(batch)["forces"]
    before = torch.backends.cuda.matmul.fp32_precision
    plain = single(batch)["forces"].double()
    with matmul_precision("tf32", "cuda"):
        tf32 = single(batch)["forces"].double()
    assert torch.backends.cuda.matmul.fp32_precision == before
    scale = exact.abs().mean()
    assert not torch.equal(tf32, plain)
    assert float((tf32 - exact).abs().mean() / scale) < 1e-2
    assert np.isfinite(float(tf32.sum()))
