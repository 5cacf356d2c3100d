"""The training configuration read by ``tace-train`` from YAML."""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import yaml

from .potential import ModelConfig

#: Model settings a user may set; the rest (species, E0s, scale, shift, neighbours) come from data.
USER_MODEL_SETTINGS = {f.name for f in fields(ModelConfig)} - {
    "atomic_numbers", "atomic_energies", "avg_num_neighbors", "scale", "shift"
}


@dataclass
class TrainingConfig:
    """Everything one training run needs. Paths are relative to the YAML file's folder.

    With ``test_file`` the saved model is evaluated on it at the end (``test`` in the summary).

    Energies in eV, forces in eV/Å, stress in eV/Å^3; ``time_budget`` in seconds of wall clock.
    ``atomic_energies`` maps atomic number -> E0 (eV); without it ``e0s_file`` (an extxyz of
    isolated atoms) is used, else E0s are fitted by least squares.
    """

    train_file: str
    valid_file: str | None = None
    valid_fraction: float = 0.1
    test_file: str | None = None
    energy_key: str = "energy"
    forces_key: str = "forces"
    stress_key: str = "stress"
    atomic_energies: dict[int, float] | None = None
    e0s_file: str | None = None
    model: dict = field(default_factory=dict)
    energy_weight: float = 1.0
    forces_weight: float = 100.0
    stress_weight: float = 1.0
    optimizer: str = "adam"
    lr: float = 0.01
    amsgrad: bool = True
    weight_decay: float = 0.0
    ema_decay: float | None = 0.99
    scheduler_factor: float = 0.8
    scheduler_patience: int = 5
    batch_size: int = 5
    valid_batch_size: int = 10
    max_epochs: int = 100
    time_budget: float | None = None
    patience: int = 30
    seed: int = 1
    bootstrap: bool = False
    device: str = "auto"
    dtype: str = "float64"
    output_dir: str = "."
    checkpoint_name: str = "model.pt"
    metrics_name: str = "metrics.jsonl"
    init_checkpoint: str | None = None
    progress_bar: bool = True

    def __post_init__(self) -> None:
        unknown = set(self.model) - USER_MODEL_SETTINGS
        if unknown:
            raise ValueError(f"unknown model settings {sorted(unknown)}; allowed are {sorted(USER_MODEL_SETTINGS)}")
        if self.optimizer not in ("adam", "adamw"):
            raise ValueError(f"optimizer must be 'adam' or 'adamw', not {self.optimizer!r}")
        if self.dtype not in ("float32", "float64"):
            raise ValueError(f"dtype must be 'float32' or 'float64', not {self.dtype!r}")
        if not 0.0 <= self.valid_fraction < 1.0:
            raise ValueError(f"valid_fraction must lie in [0, 1), not {self.valid_fraction}")
        if self.atomic_energies is not None:
            self.atomic_energies = {int(z): float(e) for z, e in self.atomic_energies.items()}

    @classmethod
    def from_dict(cls, data: dict, base_dir: str | Path = ".") -> "TrainingConfig":
        """Build from a plain mapping; relative paths are resolved against ``base_dir``."""
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown training settings {sorted(unknown)}; known are {sorted(known)}")
        if "train_file" not in data:
            raise ValueError("the training settings need 'train_file' (an extxyz file of labelled structures)")
        config = cls(**data)
        base = Path(base_dir)
        for name in ("train_file", "valid_file", "test_file", "e0s_file", "init_checkpoint", "output_dir"):
            value = getattr(config, name)
            if value is not None:
                setattr(config, name, os.path.normpath(base / Path(value).expanduser()))
        return config

    @classmethod
    def from_yaml(cls, path: str | Path) -> "TrainingConfig":
        path = Path(path)
        try:
            data = yaml.safe_load(path.read_text())
        except (OSError, yaml.YAMLError) as error:
            raise ValueError(f"cannot read training settings from {path}: {error}") from error
        if not isinstance(data, dict):
            raise ValueError(f"{path} must hold a mapping of training settings, found {type(data).__name__}")
        return cls.from_dict(data, base_dir=path.parent)

    def to_dict(self) -> dict:
        return asdict(self)
