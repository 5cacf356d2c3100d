"""The late training stage (``stage_two``): other loss weights and a held learning rate from its start epoch."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from tace_aiida.model.checkpoint import load_model
from tace_aiida.model.config import StageTwo, TrainingConfig
from tace_aiida.model.training import train

from .conftest import training_settings

SMALL = {"model": {"channels": 4, "radial_mlp": [8], "max_edge_rank": 1, "max_hidden_rank": 1, "correlation": 2},
         "valid_fraction": 0.25, "batch_size": 8}
FROZEN_LR = 1e-30
"""A learning rate whose Adam steps vanish beside float64 weights: every epoch then has the same validation loss."""


def run(folder: Path, **overrides) -> dict:
    return train(TrainingConfig.from_dict(training_settings(folder, **{**SMALL, **overrides})))


def epochs(summary: dict) -> list[dict]:
    return [json.loads(line) for line in Path(summary["metrics_file"]).read_text().splitlines()]


def test_stage_two_settings_take_mace_torch_defaults_and_round_trip(tmp_path):
    config = TrainingConfig(train_file="train.xyz", stage_two={"start": 75})
    assert config.stage_two == StageTwo(start=75, energy_weight=1000.0, forces_weight=100.0, lr=1e-3)
    assert config.to_dict()["stage_two"] == {"start": 75, "energy_weight": 1000.0, "forces_weight": 100.0, "lr": 1e-3}
    assert TrainingConfig(**config.to_dict()).stage_two == config.stage_two


@pytest.mark.parametrize(("stage_two", "message"), [
    ({"energy_weight": 10.0}, r"stage_two=\{'energy_weight': 10.0\} needs 'start'"),
    ({"start": 5, "lr_factor": 0.5}, r"needs 'start' \(an epoch\) and may set \['energy_weight', 'forces_weight', 'lr'\]"),
    ({"start": -1}, r"stage_two setting start=-1 must be >= 0"),
    ({"start": 5, "lr": 0.0}, r"stage_two setting lr=0.0 must be > 0.0"),
    ({"start": 5, "energy_weight": 0.0, "forces_weight": 0.0}, "both 0"),
    ({"start": 100}, "stage_two start 100 must be before max_epochs 100"),
])
def test_bad_stage_two_settings_are_named(stage_two, message):
    with pytest.raises(ValueError, match=message):
        TrainingConfig(train_file="train.xyz", max_epochs=100, stage_two=stage_two)


@pytest.mark.slow
def test_stage_two_changes_the_loss_and_holds_its_learning_rate(tmp_path):
    stage_two = {"start": 2, "energy_weight": 1000.0, "forces_weight": 10.0, "lr": 1e-4}
    summary = run(tmp_path, max_epochs=4, stage_two=stage_two)
    records = epochs(summary)

    assert [r["stage"] for r in records] == [1, 1, 2, 2]
    assert summary["stage_two_from"] == 2
    assert [r["lr"] for r in records[2:]] == [1e-4, 1e-4]
    for record in records:
        energy_weight, forces_weight = (1.0, 100.0) if record["stage"] == 1 else (1000.0, 10.0)
        expected = (energy_weight * record["valid_energy_per_atom_rmse"] ** 2
                    + forces_weight * record["valid_forces_rmse"] ** 2)
        assert record["valid_loss"] == pytest.approx(expected, rel=1e-12), f"epoch {record['epoch']}"
    assert summary["best_epoch"] >= 2, "the checkpoint is the best of stage two, by stage two's loss"
    _, metadata = load_model(summary["checkpoint"])
    assert metadata["best_epoch_metrics"]["stage"] == 2
    assert metadata["training"]["stage_two"] == stage_two


@pytest.mark.slow
def test_early_stopping_in_stage_one_starts_stage_two(tmp_path):
    summary = run(tmp_path, max_epochs=10, patience=1, lr=FROZEN_LR, ema_decay=None,
                  stage_two={"start": 8, "lr": FROZEN_LR})
    records = epochs(summary)

    assert records[1]["valid_loss"] == records[0]["valid_loss"], "the frozen weights did not stay frozen"
    assert [r["stage"] for r in records] == [1, 1, 2, 2]
    assert summary["stage_two_from"] == 2 and summary["stop_reason"] == "early_stopping"
