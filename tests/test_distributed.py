"""Data-parallel training over 2 processes (gloo, CPU): one step's gradients equal the
single-process gradients of the union batch, a 2-process run equals a 1-process run with the
same global batch (capped by atoms too), and a killed 2-process run resumes to the weights of
an uninterrupted one."""

from __future__ import annotations

import os
import socket

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from conftest import small_potential, water_dimer
from fidelity_adapters import distributed, from_atoms
from fidelity_adapters.distributed import World
from fidelity_adapters.training import TrainConfig, training_step


def labelled_dimers(n=10):
    """Water dimers at two fidelities with uneven labels: some energies missing, so the ranks
    hold different label counts (where averaging per-rank losses would be wrong)."""
    rng = np.random.default_rng(0)
    structures = []
    for k in range(n):
        s = from_atoms(water_dimer(seed=k), "PBE" if k % 3 else "SCAN")
        s.energy = float("nan") if k % 4 == 1 else -4150.0 + rng.normal()
        s.forces = rng.normal(scale=0.3, size=(len(s), 3))
        structures.append(s)
    return structures


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _worker(rank: int, size: int, port: int, job: str, out: str, options: dict) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(size), OMP_NUM_THREADS="1")
    torch.set_num_threads(1)
    import torch.distributed as dist

    from fidelity_adapters import training
    from fidelity_adapters.distributed import world

    ranks = world()  # gloo: on a GPU too, where two ranks share one device (nccl allows one rank per GPU)
    potential = small_potential(["H", "O"], ["PBE", "SCAN"]).to(options.get("device", "cpu"))
    data = labelled_dimers()
    config = TrainConfig(batch_size=4, max_epochs=2, progress=False, **options.get("config", {}))
    if job == "gradients":
        potential.fit_references(data)
        graphs = [potential.graph(s) for s in data[:4]]
        parameters = [p for p in potential.parameters() if p.requires_grad]
        loss = training_step(potential, ranks.shard(graphs), config, ranks, parameters)
        if ranks.is_main:
            torch.save({"loss": loss, "grads": [p.grad for p in parameters]}, out)
    else:
        if options.get("kill_after_batches"):
            calls = {"n": 0}
            real_step = training.training_step

            def killed(*args, **kwargs):
                calls["n"] += 1
                if calls["n"] > options["kill_after_batches"]:
                    raise KeyboardInterrupt
                return real_step(*args, **kwargs)

            training.training_step = killed
        try:
            training.train(potential, data[:8], data[8:], config, out_dir=out)
        except KeyboardInterrupt:
            pass
        if ranks.is_main and not options.get("kill_after_batches"):
            torch.save(potential.state_dict(), os.path.join(out, "final.pt"))
    dist.barrier()
    dist.destroy_process_group()


def run_two(job: str, out, **options) -> None:
    mp.spawn(_worker, args=(2, free_port(), job, str(out), options), nprocs=2, join=True)


def test_two_process_gradients_equal_the_union_batch(tmp_path):
    data = labelled_dimers()
    potential = small_potential(["H", "O"], ["PBE", "SCAN"])
    potential.fit_references(data)
    config = TrainConfig(batch_size=4, max_epochs=2, progress=False)
    parameters = [p for p in potential.parameters() if p.requires_grad]
    loss = training_step(potential, [potential.graph(s) for s in data[:4]], config, World(), parameters)
    run_two("gradients", tmp_path / "two.pt")
    two = torch.load(tmp_path / "two.pt", weights_only=True)
    assert two["loss"] == pytest.approx(loss, rel=1e-12)
    single = [torch.zeros_like(p) if p.grad is None else p.grad for p in parameters]  # None: reaches no output
    for ours, theirs in zip(two["grads"], single):
        torch.testing.assert_close(ours, theirs, rtol=1e-6, atol=1e-12)
    assert max(float(g.abs().max()) for g in two["grads"]) > 1e-6  # gradients that are there


def test_two_processes_train_as_one_and_resume_after_a_kill(tmp_path):
    single = small_potential(["H", "O"], ["PBE", "SCAN"])
    from fidelity_adapters.training import train

    data = labelled_dimers()
    train(single, data[:8], data[8:], TrainConfig(batch_size=4, max_epochs=2, progress=False), out_dir=tmp_path / "one")
    run_two("train", tmp_path / "two")
    run_two("train", tmp_path / "killed", kill_after_batches=2)  # killed at the start of epoch 2 (2 batches an epoch)
    assert (tmp_path / "killed" / "checkpoint.pt").exists() and not (tmp_path / "killed" / "final.pt").exists()
    run_two("train", tmp_path / "killed")  # the same command resumes
    two = torch.load(tmp_path / "two" / "final.pt", weights_only=True)
    resumed = torch.load(tmp_path / "killed" / "final.pt", weights_only=True)
    for key, value in two.items():
        torch.testing.assert_close(resumed[key], value, rtol=0, atol=0)  # bit for bit
        torch.testing.assert_close(value, single.state_dict()[key], rtol=1e-9, atol=1e-12)  # as one process
    assert not list((tmp_path / "two").glob("*rank*"))  # rank 0 alone writes


def test_two_processes_with_an_atom_limit_train_as_one(tmp_path):
    """Batches capped by atoms are cut from the global order before sharding, the same on every rank."""
    from fidelity_adapters.training import train

    capped = {"max_atoms": 12}  # two 6-atom dimers per global batch instead of four
    single = small_potential(["H", "O"], ["PBE", "SCAN"])
    data = labelled_dimers()
    result = train(single, data[:8], data[8:], TrainConfig(batch_size=4, max_epochs=2, progress=False, **capped))
    assert result.optimizer_steps == 8
    run_two("train", tmp_path / "two", config=capped)
    two = torch.load(tmp_path / "two" / "final.pt", weights_only=True)
    for key, value in two.items():
        torch.testing.assert_close(value, single.state_dict()[key], rtol=1e-9, atol=1e-12)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_two_processes_on_a_gpu_train_as_one(tmp_path):
    """The loop's tensors on CUDA through a real process group: counts and sums on the CPU,
    gradients on the GPU, as one process on the GPU."""
    from fidelity_adapters.training import train

    single = small_potential(["H", "O"], ["PBE", "SCAN"]).to("cuda")
    data = labelled_dimers()
    train(single, data[:8], data[8:], TrainConfig(batch_size=4, max_epochs=2, progress=False))
    run_two("train", tmp_path / "two", device="cuda")
    two = torch.load(tmp_path / "two" / "final.pt", weights_only=True)
    for key, value in two.items():
        torch.testing.assert_close(value, single.state_dict()[key], rtol=1e-9, atol=1e-12)


def test_torchrun_on_cuda_joins_nccl_with_gloo_for_cpu_tensors(monkeypatch):
    """Under torchrun, the backend follows the device: nccl cannot reduce the CPU-held label
    counts, so CUDA runs name gloo for those."""
    joined = []
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setattr(dist, "is_initialized", lambda: False)
    monkeypatch.setattr(dist, "init_process_group", joined.append)
    distributed.world("cuda:0")
    distributed.world("cpu")
    assert joined == ["cpu:gloo,cuda:nccl", "gloo"]
