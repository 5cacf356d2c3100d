"""The exported TorchScript potential equals the Python model and runs with PyTorch alone."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch
from ase import Atoms
from tace_aiida.model.calculator import TACECalculator
from tace_aiida.model.checkpoint import save_checkpoint
from tace_aiida.model.export import DeployedCalculator, export_model, graph_inputs, main

from .conftest import SPECIES_3BPA, default_dtype, periodic_cell, small_model


@pytest.fixture
def checkpoint(tmp_path) -> str:
    """A float32 random-weight checkpoint, as float32 training leaves it."""
    with default_dtype(torch.float32):
        model = small_model(seed=3, max_hidden_rank=2, scale=20.0, atomic_energies=[0.1, -0.2, 0.3, 0.05])
    return str(save_checkpoint(tmp_path / "model.pt", model))


@pytest.mark.parametrize("filename", ["model.ts", "model.pt2"])
def test_exported_file_equals_the_python_model(checkpoint, tmp_path, frames_300K, filename):
    """TorchScript and torch.export's format, on a molecule and on a periodic cell of another size than the trace's."""
    assert main([checkpoint, str(tmp_path / filename), "--dtype", "float64"]) == 0
    for atoms in (frames_300K[3], periodic_cell(seed=2)):
        results = []
        for calculator in (TACECalculator(checkpoint, device="cpu", dtype="float64"), DeployedCalculator(tmp_path / filename)):
            calculator.calculate(atoms.copy(), ["energy"])
            results.append(calculator.results)
        assert np.abs(results[1]["forces"]).max() > 1e-2
        for name in ["energy", "energies", "forces"] + (["stress"] if atoms.pbc.all() else []):
            assert np.abs(np.asarray(results[0][name]) - np.asarray(results[1][name])).max() < 1e-10, name


@pytest.mark.slow
def test_exported_file_runs_without_tace_aiida(tmp_path, frames_300K):
    """A fresh interpreter that cannot import tace_aiida loads the file and gets the same forces."""
    with default_dtype(torch.float64):
        model = small_model(seed=3)
    export_model(model, tmp_path / "model.ts")
    inputs = graph_inputs(frames_300K[0], SPECIES_3BPA, 5.0, torch.float64)
    torch.save(inputs, tmp_path / "inputs.pt")
    expected = model.eval()(dict(zip(["positions", "cell", "species", "edge_index", "shifts", "batch"], inputs, strict=True)))
    script = (
        "import sys; sys.modules['tace_aiida'] = None\n"
        "import torch\n"
        f"module = torch.jit.load({str(tmp_path / 'model.ts')!r})\n"
        f"out = module(*torch.load({str(tmp_path / 'inputs.pt')!r}), False)\n"
        f"torch.save(out, {str(tmp_path / 'out.pt')!r})\n"
    )
    subprocess.run([sys.executable, "-c", script], check=True, cwd=tmp_path)
    out = torch.load(tmp_path / "out.pt")
    assert abs(out["energy"].item() - expected.energy.item()) < 1e-10
    assert (out["forces"] - expected.forces).abs().max() < 1e-10


@pytest.mark.slow
def test_exported_program_runs_without_tace_aiida(tmp_path, frames_300K):
    """A fresh interpreter that cannot import tace_aiida loads the .pt2 file and gets the same energy and forces."""
    from tace_aiida.model.export import condition_inputs
    from tace_aiida.model.exported_program import export_program

    with default_dtype(torch.float64):
        model = small_model(seed=3)
    export_program(model, tmp_path / "model.pt2")
    inputs = graph_inputs(frames_300K[0], SPECIES_3BPA, 5.0, torch.float64) + condition_inputs(frames_300K[0], torch.float64)
    torch.save(inputs, tmp_path / "inputs.pt")
    expected = model.eval()(dict(zip(["positions", "cell", "species", "edge_index", "shifts", "batch"], inputs[:6], strict=True)))
    script = (
        "import sys; sys.modules['tace_aiida'] = None\n"
        "import torch\n"
        f"module = torch.export.load({str(tmp_path / 'model.pt2')!r}).module()\n"
        f"out = module(*torch.load({str(tmp_path / 'inputs.pt')!r}))\n"
        f"torch.save(out, {str(tmp_path / 'out.pt')!r})\n"
    )
    subprocess.run([sys.executable, "-c", script], check=True, cwd=tmp_path)
    energy, _, forces, *_ = torch.load(tmp_path / "out.pt")
    assert abs(energy.item() - expected.energy.item()) < 1e-10
    assert (forces - expected.forces).abs().max() < 1e-10


def test_the_exported_program_takes_the_smallest_structures(checkpoint, tmp_path):
    """A single atom, two atoms farther apart than the cutoff (no edges) and one atom with its periodic images give
    the checkpoint's energy and forces."""
    assert main([checkpoint, str(tmp_path / "model.pt2"), "--dtype", "float64"]) == 0
    structures = [Atoms("C", positions=[[0, 0, 0]]), Atoms("CO", positions=[[0, 0, 0], [0, 0, 9.0]]),
                  Atoms("H", cell=[3.0, 3.0, 3.0], pbc=True)]
    for atoms in structures:
        results = []
        for calculator in (TACECalculator(checkpoint, device="cpu", dtype="float64"),
                           DeployedCalculator(tmp_path / "model.pt2")):
            copy = atoms.copy()
            copy.calc = calculator
            results.append((copy.get_potential_energy(), copy.get_forces()))
        assert results[1][0] == pytest.approx(results[0][0], abs=1e-10), atoms
        assert np.abs(results[1][1] - results[0][1]).max() < 1e-10, atoms


@pytest.mark.slow
def test_a_compiled_program_equals_the_python_model(checkpoint, tmp_path, frames_300K):
    """``tace-export --compile``: the file's AOTInductor program gives the checkpoint's energies, forces and stress
    (1e-10, float64) on a molecule and a periodic cell of other sizes than the trace's, and the portable program in
    the same file still loads with torch.export alone."""
    path = tmp_path / "model.pt2"
    assert main([checkpoint, str(path), "--dtype", "float64", "--compile"]) == 0
    compiled, portable = DeployedCalculator(path), DeployedCalculator(path, compiled=False)
    assert type(compiled.module).__name__ == "AOTICompiledModel"
    assert isinstance(portable.module, torch.nn.Module)
    for atoms in (frames_300K[3], periodic_cell(seed=2)):
        results = []
        for calculator in (TACECalculator(checkpoint, device="cpu", dtype="float64"), compiled, portable):
            calculator.calculate(atoms.copy(), ["energy"])
            results.append(calculator.results)
        for name in ["energy", "energies", "forces"] + (["stress"] if atoms.pbc.all() else []):
            for result in results[1:]:
                assert np.abs(np.asarray(results[0][name]) - np.asarray(result[name])).max() < 1e-10, name


def test_compile_is_refused_for_torchscript_and_a_missing_compiled_program_is_named(checkpoint, tmp_path):
    with pytest.raises(SystemExit):
        main([checkpoint, str(tmp_path / "model.ts"), "--compile"])
    assert main([checkpoint, str(tmp_path / "model.pt2")]) == 0
    with pytest.raises(ValueError, match="holds no compiled program, not one for cpu"):
        DeployedCalculator(tmp_path / "model.pt2", compiled=True)
