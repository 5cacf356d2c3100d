"""A training stopped after some epochs and resumed from its restart file ends exactly as one that never stopped."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from tace_aiida.model.checkpoint import load_model
from tace_aiida.model.config import TrainingConfig
from tace_aiida.model.restart import RestartError
from tace_aiida.model.training import train

from .conftest import training_settings

pytestmark = pytest.mark.slow

SMALL = {"model": {"channels": 4, "radial_mlp": [8], "max_edge_rank": 1, "max_hidden_rank": 1, "correlation": 2},
         "max_epochs": 4, "valid_fraction": 0.25, "batch_size": 8}


def run(folder: Path, **overrides) -> dict:
    return train(TrainingConfig.from_dict(training_settings(folder, **{**SMALL, **overrides})))


def epochs(summary: dict) -> list[dict]:
    return [json.loads(line) for line in Path(summary["metrics_file"]).read_text().splitlines()]


def test_resumed_training_matches_an_uninterrupted_one(tmp_path):
    whole = run(tmp_path / "whole")
    first = run(tmp_path / "first", max_epochs=2)
    resumed = run(tmp_path / "resumed", resume_from=str(tmp_path / "first" / "restart.pt"))

    assert first["epochs_run"] == 2 and resumed["resumed_after_epoch"] == 1 and resumed["epochs_run"] == 4
    assert [e["epoch"] for e in epochs(resumed)] == [0, 1, 2, 3], "the metrics hold every epoch once"
    assert_same_training(resumed, whole)


def test_training_resumed_in_stage_two_matches_an_uninterrupted_one(tmp_path):
    stage_two = {"start": 2, "lr": 2e-3}
    whole = run(tmp_path / "whole", stage_two=stage_two)
    first = run(tmp_path / "first", max_epochs=3, stage_two=stage_two)
    resumed = run(tmp_path / "resumed", stage_two=stage_two, resume_from=str(tmp_path / "first" / "restart.pt"))

    assert first["stage_two_from"] == resumed["stage_two_from"] == whole["stage_two_from"] == 2
    assert [e["stage"] for e in epochs(resumed)] == [1, 1, 2, 2]
    assert_same_training(resumed, whole)


def assert_same_training(resumed: dict, whole: dict) -> None:
    """The two trainings' per-epoch losses and learning rates, best epochs and saved weights agree (1e-12)."""
    for key in ("train_loss", "valid_loss", "lr"):
        assert [e[key] for e in epochs(resumed)] == pytest.approx([e[key] for e in epochs(whole)], rel=1e-12, abs=0)
    assert resumed["best_epoch"] == whole["best_epoch"]
    model_whole, _ = load_model(whole["checkpoint"])
    model_resumed, _ = load_model(resumed["checkpoint"])
    for (name, a), (_, b) in zip(model_whole.state_dict().items(), model_resumed.state_dict().items(), strict=True):
        assert torch.allclose(a, b, rtol=0, atol=1e-12), f"{name} differs after resuming"


def test_a_restart_of_a_different_training_is_refused_by_name(tmp_path):
    run(tmp_path / "first", max_epochs=1)
    restart = str(tmp_path / "first" / "restart.pt")
    with pytest.raises(RestartError, match=r"lr: 0.01 -> 0.002"):
        run(tmp_path / "other", lr=0.002, resume_from=restart)


def test_a_truncated_restart_file_is_named(tmp_path):
    run(tmp_path / "first", max_epochs=1)
    restart = tmp_path / "first" / "restart.pt"
    restart.write_bytes(restart.read_bytes()[:2000])
    with pytest.raises(RestartError, match="restart.pt is not a readable training restart file"):
        run(tmp_path / "again", resume_from=str(restart))
