"""Gradient clipping (``clip_grad_norm``): its range is checked, and a training step uses the clipped gradient."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from tace_aiida.model.checkpoint import load_model
from tace_aiida.model.config import TrainingConfig
from tace_aiida.model.training import train

from .conftest import training_settings

TINY = {"model": {"channels": 4, "radial_mlp": [8], "max_edge_rank": 1, "max_hidden_rank": 1, "correlation": 2},
        "max_epochs": 1, "ema_decay": None, "batch_size": 8}


def weights_after_one_epoch(folder: Path, **overrides) -> dict[str, torch.Tensor]:
    summary = train(TrainingConfig.from_dict(training_settings(folder, **{**TINY, **overrides})))
    return load_model(summary["checkpoint"])[0].state_dict()


def largest_change(before: dict[str, torch.Tensor], after: dict[str, torch.Tensor]) -> float:
    return max((after[name] - before[name]).abs().max().item() for name in before)


@pytest.mark.parametrize("value", [0.0, -1.0])
def test_a_clip_norm_that_is_not_positive_is_named(value):
    with pytest.raises(ValueError, match=f"training setting clip_grad_norm={value!r} must be > 0.0"):
        TrainingConfig(train_file="train.xyz", clip_grad_norm=value)


def test_steps_use_the_clipped_gradient(tmp_path):
    """Adam's step does not depend on the gradient's scale unless the gradient is far below its epsilon
    (1e-8): clipped to a norm of 1e-12, the steps shrink by about 1e-5; a loose clip changes nothing."""
    initial = weights_after_one_epoch(tmp_path / "frozen", lr=1e-30)
    free = weights_after_one_epoch(tmp_path / "free")
    loose = weights_after_one_epoch(tmp_path / "loose", clip_grad_norm=1e12)
    clipped = weights_after_one_epoch(tmp_path / "clipped", clip_grad_norm=1e-12)
    assert largest_change(initial, free) > 1e-3
    assert all(torch.equal(free[name], loose[name]) for name in free)
    assert largest_change(initial, clipped) < 1e-5
