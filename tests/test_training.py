"""Training on real 3BPA data, checkpoints, fine-tuning and the console scripts."""

from __future__ import annotations

import json
import os
import pickle
import subprocess

import pytest
import torch
import yaml
from tace_aiida.model.checkpoint import CheckpointError, load_model, save_checkpoint
from tace_aiida.model.config import TrainingConfig
from tace_aiida.model.data import atoms_to_graph, collate
from tace_aiida.model.evaluation import evaluate
from tace_aiida.model.potential import CartesianTensorPotential
from tace_aiida.model.training import prepare_data, train

from .conftest import DATA, random_orthogonal, training_settings

pytestmark = pytest.mark.slow


def validation_graphs(tmp_path, model_config) -> list:
    config = TrainingConfig.from_dict(training_settings(tmp_path))
    return prepare_data(config, model_config).valid


def test_training_lowers_validation_force_error(trained, tmp_path, float64):
    model, metadata = load_model(trained["checkpoint"])
    valid = validation_graphs(tmp_path, model.config)
    assert len(valid) == 10
    torch.manual_seed(0)
    untrained = CartesianTensorPotential(model.config).eval()
    before = evaluate(untrained, valid)["forces_rmse"]
    after = evaluate(model, valid)["forces_rmse"]
    assert after < 0.6 * before, f"force RMSE {after:.3f} eV/Å after training, {before:.3f} before"
    assert metadata["best_epoch_metrics"]["valid_forces_rmse"] == pytest.approx(after, rel=1e-9)
    rotated = valid[0] | {"positions": valid[0]["positions"] @ torch.tensor(random_orthogonal(0, True)).T}
    energies = [model(collate([g]), compute_forces=False).energy.item() for g in (valid[0], rotated)]
    assert abs(energies[0] - energies[1]) < 1e-9, "the trained (averaged) model lost its invariance"
    lines = [json.loads(line) for line in open(trained["metrics_file"])]
    assert [line["epoch"] for line in lines] == list(range(trained["epochs_run"]))


def test_checkpoint_round_trip_is_exact(trained, tmp_path, frames_300K):
    model, metadata = load_model(trained["checkpoint"])
    copy = save_checkpoint(tmp_path / "copy.pt", model, metadata)
    reloaded, _ = load_model(copy)
    graph = atoms_to_graph(frames_300K[7], model.config.atomic_numbers, model.config.r_max, dtype=torch.float64)
    first, second = model(collate([graph])), reloaded(collate([graph]))
    assert torch.equal(first.energy, second.energy)
    assert torch.equal(first.forces, second.forces)
    assert reloaded.config == model.config
    assert model.config.atomic_numbers == [1, 6, 7, 8]
    assert model.config.atomic_energies[0] == pytest.approx(-13.587222780835477)


def test_checkpoint_errors_name_the_file(trained, tmp_path):
    missing = tmp_path / "nothing.pt"
    with pytest.raises(CheckpointError, match="nothing.pt does not exist"):
        load_model(missing)
    text = tmp_path / "notes.pt"
    text.write_text("not a checkpoint")
    with pytest.raises(CheckpointError, match="notes.pt is not a readable"):
        load_model(text)
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(open(trained["checkpoint"], "rb").read()[:5000])
    with pytest.raises(CheckpointError, match="truncated.pt"):
        load_model(truncated)
    payload = torch.load(trained["checkpoint"], weights_only=True)
    payload["format_version"] = 99
    future = tmp_path / "future.pt"
    torch.save(payload, future)
    with pytest.raises(CheckpointError, match="future.pt has checkpoint format version 99"):
        load_model(future)
    foreign = tmp_path / "foreign.pt"
    torch.save({"weights": torch.zeros(3)}, foreign)
    with pytest.raises(CheckpointError, match="foreign.pt is not a tace-aiida checkpoint"):
        load_model(foreign)


class _Payload:
    def __reduce__(self):
        return (os.system, ("touch /tmp/tace-aiida-should-not-exist",))


def test_loading_never_executes_code_from_the_file(tmp_path):
    marker = "/tmp/tace-aiida-should-not-exist"
    if os.path.exists(marker):
        os.remove(marker)
    malicious = tmp_path / "malicious.pt"
    with open(malicious, "wb") as handle:
        pickle.dump({"format": "tace-aiida-potential", "x": _Payload()}, handle)
    with pytest.raises(CheckpointError, match="malicious.pt"):
        load_model(malicious)
    assert not os.path.exists(marker)


def test_fine_tuning_starts_from_the_checkpoint(trained, tmp_path):
    base, _ = load_model(trained["checkpoint"])
    settings = training_settings(tmp_path, init_checkpoint=trained["checkpoint"], max_epochs=1, lr=1e-4,
                                 train_file=str(DATA / "3bpa_1200K_12.xyz"), valid_fraction=0.0)
    summary = train(TrainingConfig.from_dict(settings))
    tuned, metadata = load_model(summary["checkpoint"])
    assert tuned.config == base.config
    assert metadata["fine_tuned_from"] == trained["checkpoint"]
    base_weights, tuned_weights = base.state_dict(), tuned.state_dict()
    changed = [k for k in base_weights if not torch.equal(base_weights[k], tuned_weights[k])]
    assert changed, "fine-tuning changed no weight"
    assert max((base_weights[k] - tuned_weights[k]).abs().max().item() for k in changed) < 0.05


def test_bootstrap_and_seed_change_the_training_set(tmp_path):
    plain = prepare_data(TrainingConfig.from_dict(training_settings(tmp_path)))
    resampled = prepare_data(TrainingConfig.from_dict(training_settings(tmp_path, bootstrap=True, seed=7)))

    def energies(data) -> list[float]:
        return sorted(float(g["energy"]) for g in data.train)

    assert len(resampled.train) == len(plain.train)
    assert energies(resampled) != energies(plain)
    assert len(set(energies(resampled))) < len(resampled.train)


def test_bad_settings_are_named(tmp_path):
    with pytest.raises(ValueError, match="unknown training settings \\['epochs'\\]"):
        TrainingConfig.from_dict({"train_file": "x.xyz", "epochs": 3})
    with pytest.raises(ValueError, match="unknown model settings \\['chanels'\\]"):
        TrainingConfig.from_dict({"train_file": "x.xyz", "model": {"chanels": 3}})
    config = TrainingConfig.from_dict(training_settings(tmp_path, train_file=str(tmp_path / "absent.xyz")))
    with pytest.raises(ValueError, match="absent.xyz"):
        train(config)


def test_console_scripts_train_and_evaluate(tmp_path):
    settings = training_settings(tmp_path / "out", max_epochs=1, dtype="float32")
    config_file = tmp_path / "train.yaml"
    config_file.write_text(yaml.safe_dump(settings))
    trained = subprocess.run(["tace-train", str(config_file), "--seed", "3"], capture_output=True, text=True, check=True)
    summary = json.loads(trained.stdout.strip().splitlines()[-1])
    assert summary["epochs_run"] == 1
    evaluated = subprocess.run(
        ["tace-eval", "--checkpoint", summary["checkpoint"], "--data", str(DATA / "3bpa_1200K_12.xyz"), "--json"],
        capture_output=True, text=True, check=True,
    )
    metrics = json.loads(evaluated.stdout)
    assert metrics["structures"] == 12 and metrics["forces_rmse"] > 0
    table = subprocess.run(
        ["tace-eval", "--checkpoint", summary["checkpoint"], "--data", str(DATA / "3bpa_1200K_12.xyz")],
        capture_output=True, text=True, check=True,
    ).stdout
    assert "forces" in table and "meV/Å" in table
    broken = subprocess.run(
        ["tace-eval", "--checkpoint", str(config_file), "--data", str(DATA / "3bpa_1200K_12.xyz")],
        capture_output=True, text=True,
    )
    assert broken.returncode == 1 and "train.yaml" in broken.stderr


def test_a_loss_that_stops_being_finite_stops_training_naming_the_epoch(tmp_path, monkeypatch):
    """Injected: the third batch's loss is NaN; the epoch ends, and training stops with the reason."""
    from tace_aiida.model import training

    real_loss, calls = training.loss_function, []

    def failing_loss(out, batch, config):
        calls.append(1)
        loss = real_loss(out, batch, config)
        return loss * float("nan") if len(calls) == 3 else loss

    monkeypatch.setattr(training, "loss_function", failing_loss)
    with pytest.raises(FloatingPointError, match="loss became nan in epoch 0; lower the learning rate"):
        training.train(TrainingConfig.from_dict(training_settings(tmp_path, max_epochs=2)))
