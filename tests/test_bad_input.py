"""Bad input to the model side and the standalone tools: refused before any work, with the value named."""

from __future__ import annotations

import pytest

from tace_aiida.model.cli import train_main
from tace_aiida.model.config import TrainingConfig


@pytest.mark.parametrize("settings,message", [
    ({"max_epochs": "ten"}, "training setting max_epochs: 'ten' is not an integer"),
    ({"max_epochs": 0}, "training setting max_epochs=0 must be >= 1"),
    ({"max_epochs": -3}, "training setting max_epochs=-3 must be >= 1"),
    ({"lr": -0.01}, "training setting lr=-0.01 must be > 0"),
    ({"lr": "fast"}, "training setting lr: 'fast' is not a number"),
    ({"valid_fraction": 1.0}, "training setting valid_fraction=1.0 must be in \\[0.0, 1.0\\)"),
    ({"batch_size": 2.5}, "training setting batch_size: 2.5 is not an integer"),
    ({"bootstrap": "yes"}, "training setting bootstrap: 'yes' is not true or false"),
    ({"seed": True}, "training setting seed: True is not an integer"),
    ({"ema_decay": 1.5}, "training setting ema_decay=1.5 must be in \\[0.0, 1.0\\)"),
    ({"device": "gpu"}, "training setting device='gpu' must be 'auto' or a torch device"),
    ({"dtype": "float16"}, "training setting dtype='float16' must be one of 'float32', 'float64'"),
    ({"atomic_energies": {"H": -13.6}}, "training setting atomic_energies: key 'H' is not an atomic number"),
    ({"energy_weight": 0, "forces_weight": 0}, "energy_weight and forces_weight are both 0"),
    ({"epochs": 3}, "unknown training settings \\['epochs'\\]"),
    ({"model": {"chanels": 3}}, "unknown model settings \\['chanels'\\]"),
    ({"model": {"channels": "8"}}, "model setting channels: '8' is not an integer"),
    ({"model": {"r_max": 0}}, "model setting r_max=0 must be > 0"),
    ({"model": {"radial_mlp": [32, 0]}}, "model setting radial_mlp=\\[32, 0\\] must be a list of integers >= 1"),
    ({"model": {"max_hidden_rank": 4}}, "model settings: max_hidden_rank=4 must lie in 0..max_edge_rank=3"),
])
def test_training_settings_are_checked_by_type_and_range(settings, message):
    with pytest.raises(ValueError, match=message):
        TrainingConfig.from_dict({"train_file": "train.xyz", **settings})


def test_settings_from_yaml_and_json_keep_their_types():
    config = TrainingConfig.from_dict({"train_file": "t.xyz", "lr": 1, "atomic_energies": {"1": -13.6},
                                       "model": {"radial_mlp": [8, 8]}, "ema_decay": None})
    assert config.atomic_energies == {1: -13.6}


def test_yaml_exponent_is_a_number(tmp_path):
    path = tmp_path / "train.yaml"
    path.write_text("train_file: t.xyz\nlr: 1e-3\nweight_decay: 5E-7\n")
    config = TrainingConfig.from_yaml(path)
    assert (config.lr, config.weight_decay) == (0.001, 5e-7)


@pytest.mark.parametrize("line,message", [
    ('max_epochs: "ten"', "train.yaml: training setting max_epochs: 'ten' is not an integer"),
    ("max_epochs: 0", "train.yaml: training setting max_epochs=0 must be >= 1"),
])
def test_tace_train_prints_one_line_and_exits_non_zero(tmp_path, capsys, line, message):
    config = tmp_path / "train.yaml"
    config.write_text(f"train_file: train.xyz\n{line}\n")
    with pytest.raises(SystemExit) as exit_info:
        train_main([str(config)])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.splitlines() == [f"tace-train: {tmp_path}/{message}"]
