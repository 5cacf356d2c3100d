"""Constants are rebuilt in the evaluation dtype: a float32 model evaluated in float64 is exact."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from ase import Atoms
from tace_aiida.model.checkpoint import CheckpointError, load_model, save_checkpoint
from tace_aiida.model.data import atoms_to_graph, collate

from .conftest import SPECIES_3BPA, default_dtype, random_orthogonal, small_model

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def float32_checkpoint(tmp_path) -> str:
    """A random-weight model built and saved in float32, as a float32 training run leaves it."""
    with default_dtype(torch.float32):
        model = small_model(seed=3, max_hidden_rank=2, correlation=3, atomic_energies=[0.1, -0.2, 0.3, 0.05], scale=50.0)
    return str(save_checkpoint(tmp_path / "float32.pt", model))


def rotation_errors(model, atoms: Atoms) -> tuple[float, float]:
    """(|dE| eV, max |dF| eV/Å) between ``atoms`` and its rotoreflected, translated copy."""
    q = random_orthogonal(7, reflect=True)
    moved = atoms.copy()
    moved.positions = atoms.positions @ q.T + np.array([1.3, -4.2, 0.7])
    dtype = next(model.parameters()).dtype
    outs = [model(collate([atoms_to_graph(a, SPECIES_3BPA, model.config.r_max, dtype=dtype)])) for a in (atoms, moved)]
    assert outs[0].forces.abs().max() > 1e-2, "forces too small for the test to mean anything"
    energy_error = abs(outs[1].energy.item() - outs[0].energy.item())
    force_error = (outs[1].forces - outs[0].forces @ torch.as_tensor(q.T, dtype=dtype)).abs().max().item()
    return energy_error, force_error


def assert_exact_constants(model) -> None:
    """Every constant equals its float64 master (not a float32 value cast up)."""
    for module in model.modules():
        for name, master in getattr(module, "_constant_masters", {}).items():
            assert torch.equal(getattr(module, name), master.to(getattr(module, name).dtype))


def test_float32_checkpoint_is_equivariant_in_float64(float32_checkpoint, frames_300K):
    model, _ = load_model(float32_checkpoint, dtype=torch.float64)
    assert next(model.parameters()).dtype == torch.float64
    assert_exact_constants(model)
    energy_error, force_error = rotation_errors(model, frames_300K[0])
    assert energy_error < 1e-10 and force_error < 1e-10


def test_checkpoints_hold_weights_not_constants(float32_checkpoint):
    state = torch.load(float32_checkpoint, weights_only=True)["state_dict"]
    assert not any("coupling" in key or "raise_" in key or "sort_" in key for key in state)
    assert "atomic_energies" not in state and "atomic_numbers" not in state


def test_old_checkpoints_with_constants_load_and_drop_them(float32_checkpoint, frames_300K, tmp_path):
    """Files written when the constants were buffers carry them in float32: they are ignored."""
    with default_dtype(torch.float32):
        constants = dict(load_model(float32_checkpoint)[0].named_buffers())
    payload = torch.load(float32_checkpoint, weights_only=True)
    payload["state_dict"].update(constants)
    torch.save(payload, tmp_path / "old.pt")
    model, _ = load_model(tmp_path / "old.pt", dtype=torch.float64)
    assert_exact_constants(model)
    energy_error, force_error = rotation_errors(model, frames_300K[0])
    assert energy_error < 1e-10 and force_error < 1e-10
    payload["state_dict"]["interactions.0.unknown"] = torch.zeros(2)
    torch.save(payload, tmp_path / "foreign.pt")
    with pytest.raises(CheckpointError, match="weights do not fit"):
        load_model(tmp_path / "foreign.pt")


def test_changing_dtype_rebuilds_constants(frames_300K):
    with default_dtype(torch.float32):
        model = small_model(seed=3, scale=50.0)
    model = model.double()
    assert_exact_constants(model)
    energy_error, force_error = rotation_errors(model, frames_300K[0])
    assert energy_error < 1e-10 and force_error < 1e-10
    model = model.float()
    assert model.interactions[0].fused.dtype == torch.float32
    assert_exact_constants(model)
