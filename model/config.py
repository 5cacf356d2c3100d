"""The training configuration read by ``tace-train`` from YAML."""

from __future__ import annotations

import math
import os
import re
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import get_type_hints

import yaml

from .data import is_device
from .graph_store import cache_directory
from .potential import MESSAGE_NORMALIZATIONS, ModelConfig
from .validation import (
    NON_EMPTY,
    Rule,
    at_least,
    check_dataclass,
    check_settings,
    each_at_least,
    greater_than,
    one_of,
    within,
)

#: Model settings a user may set; the rest (species, E0s, scale, shift, neighbours) come from data.
USER_MODEL_SETTINGS = {f.name for f in fields(ModelConfig)} - {
    "atomic_numbers", "atomic_energies", "avg_num_neighbors", "scale", "shift"
}

#: Ranges of the user model settings (r_max in Å).
MODEL_RULES: dict[str, Rule] = {
    "r_max": greater_than(0.0), "num_bessel": at_least(1), "envelope_p": at_least(1), "radial_mlp": each_at_least(1),
    "channels": at_least(1), "max_edge_rank": at_least(0), "max_hidden_rank": at_least(0), "correlation": at_least(1),
    "num_interactions": at_least(1), "readout_mlp": each_at_least(1),
    "long_range_sigma": greater_than(0.0), "long_range_spacing": greater_than(0.0), "num_fidelities": at_least(0),
    "cp_rank": at_least(0), "message_normalization": one_of(*MESSAGE_NORMALIZATIONS),
}


#: Ranges of the training settings (lr in the optimiser's units, time_budget in s).
TRAINING_RULES: dict[str, Rule] = {
    "train_file": NON_EMPTY, "energy_key": NON_EMPTY, "forces_key": NON_EMPTY, "stress_key": NON_EMPTY,
    "dipole_key": NON_EMPTY, "polarizability_key": NON_EMPTY, "born_charges_key": NON_EMPTY,
    "valid_fraction": within(0.0, 1.0),
    "atomic_energies": (lambda table: all(1 <= z <= 118 and math.isfinite(e) for z, e in table.items()),
                        "a mapping of atomic numbers (1-118) to finite energies in eV"),
    "energy_weight": at_least(0.0), "forces_weight": at_least(0.0), "stress_weight": at_least(0.0),
    "dipole_weight": at_least(0.0), "polarizability_weight": at_least(0.0), "born_charges_weight": at_least(0.0),
    "optimizer": one_of("adam", "adamw"), "lr": greater_than(0.0), "weight_decay": at_least(0.0),
    "clip_grad_norm": greater_than(0.0), "ema_decay": within(0.0, 1.0), "scheduler_factor": (lambda value: 0 < value < 1, "in (0, 1)"),
    "scheduler_patience": at_least(0), "batch_size": at_least(1), "valid_batch_size": at_least(1),
    "max_epochs": at_least(1), "time_budget": greater_than(0.0), "patience": at_least(1), "seed": at_least(0),
    "device": (is_device, "'auto' or a torch device such as 'cpu', 'cuda' or 'cuda:1'"),
    "dtype": one_of("float32", "float64"),
    "output_dir": NON_EMPTY, "checkpoint_name": NON_EMPTY, "metrics_name": NON_EMPTY,
    "restart_name": NON_EMPTY,
}


#: Ranges of the stage-two settings (lr in the optimiser's units).
STAGE_TWO_RULES: dict[str, Rule] = {
    "start": at_least(0), "energy_weight": at_least(0.0), "forces_weight": at_least(0.0), "lr": greater_than(0.0),
}


@dataclass
class StageTwo:
    """A late training stage with another loss balance, as mace-torch's ``--stage_two`` (its defaults).

    From epoch ``start`` on (0-based; earlier if early stopping would end the first stage), the loss uses
    ``energy_weight`` and ``forces_weight`` (other weights are kept), the learning rate is set to ``lr`` and held,
    and the saved checkpoint is the best of this stage by its own validation loss.
    """

    start: int
    energy_weight: float = 1000.0
    forces_weight: float = 100.0
    lr: float = 1e-3

    def __post_init__(self) -> None:
        check_dataclass(self, STAGE_TWO_RULES, "stage_two setting")
        if self.energy_weight == 0 and self.forces_weight == 0:
            raise ValueError("stage_two settings energy_weight and forces_weight are both 0: there is nothing to learn")


class _YAMLLoader(yaml.SafeLoader):
    """Safe loader that reads ``1e-3`` as a number, as YAML 1.2 does (PyYAML's YAML 1.1 reads a string)."""


_YAMLLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*)?(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789."),
)


@dataclass
class TrainingConfig:
    """Everything one training run needs. Paths are relative to the YAML file's folder.

    With ``test_file`` the saved model is evaluated on it at the end (``test`` in the summary).
    ``train_file``, ``valid_file`` and ``test_file`` are each an extxyz file, an HDF5 frame store
    (``.h5``, :mod:`.frames`) or a list of such files.
    Every setting is checked by type and range when the config is made (``TRAINING_RULES``,
    ``MODEL_RULES``); ``ema_decay`` 0 or null trains without an averaged model.
    After every epoch the whole training state is written to ``restart_name``; ``resume_from`` continues
    from such a file (:mod:`.restart`), e.g. after a job reached its wall time.

    Energies in eV, forces in eV/Å, stress in eV/Å^3, dipoles in e Å, polarizabilities in Å^3 (the
    last two are learnt by models with ``dipole`` / ``polarizability`` heads, or with ``field_dipole``, from
    molecules that have them), Born effective charges in e (per atom, learnt by ``field_dipole`` models from
    any structure that has them); ``time_budget`` in seconds of wall clock
    spent training, summed over the jobs of a resumed training.
    ``atomic_energies`` maps atomic number -> E0 (eV); without it ``e0s_file`` (an extxyz of
    isolated atoms) is used, else E0s are fitted by least squares.
    ``graph_cache_dir`` is the folder where the graph edges of HDF5 frame stores are cached
    (:mod:`.graph_store`); null: ``$TACE_GRAPH_CACHE``, else ``~/.cache/tace-aiida/graphs``;
    ``off`` builds without a cache.
    ``clip_grad_norm`` rescales the gradient of every step whose norm (over all weights) exceeds it, as
    mace-torch's ``--clip_grad`` (its default there is 10); null leaves gradients alone.
    """

    train_file: str | list[str]
    valid_file: str | list[str] | None = None
    valid_fraction: float = 0.1
    test_file: str | list[str] | None = None
    energy_key: str = "energy"
    forces_key: str = "forces"
    stress_key: str = "stress"
    dipole_key: str = "dipole"
    polarizability_key: str = "polarizability"
    born_charges_key: str = "born_effective_charges"
    atomic_energies: dict[int, float] | None = None
    e0s_file: str | None = None
    model: dict = field(default_factory=dict)
    energy_weight: float = 1.0
    forces_weight: float = 100.0
    stress_weight: float = 1.0
    dipole_weight: float = 1.0
    polarizability_weight: float = 1.0
    born_charges_weight: float = 1.0
    optimizer: str = "adam"
    lr: float = 0.01
    amsgrad: bool = True
    weight_decay: float = 0.0
    clip_grad_norm: float | None = None
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
    restart_name: str = "restart.pt"
    resume_from: str | None = None
    progress_bar: bool = True
    graph_cache_dir: str | None = None
    stage_two: StageTwo | None = None

    def __post_init__(self) -> None:
        if isinstance(self.stage_two, dict):
            unknown = set(self.stage_two) - {f.name for f in fields(StageTwo)}
            if unknown or "start" not in self.stage_two:
                raise ValueError(f"training setting stage_two={self.stage_two!r} needs 'start' (an epoch) and may set "
                                 f"{[f.name for f in fields(StageTwo)][1:]}")
            self.stage_two = StageTwo(**self.stage_two)
        if isinstance(self.atomic_energies, dict):
            self.atomic_energies = {_atomic_number(z): e for z, e in self.atomic_energies.items()}
        check_dataclass(self, TRAINING_RULES, "training setting")
        if self.stage_two is not None and self.stage_two.start >= self.max_epochs:
            raise ValueError(f"stage_two start {self.stage_two.start} must be before max_epochs {self.max_epochs}, "
                             "else the stage never runs")
        if self.energy_weight == 0 and self.forces_weight == 0:
            raise ValueError("training settings energy_weight and forces_weight are both 0: there is nothing to learn")
        if self.atomic_energies is not None:
            self.atomic_energies = {z: float(e) for z, e in self.atomic_energies.items()}
        unknown = set(self.model) - USER_MODEL_SETTINGS
        if unknown:
            raise ValueError(f"unknown model settings {sorted(unknown)}; allowed are {sorted(USER_MODEL_SETTINGS)}")
        check_settings(self.model, get_type_hints(ModelConfig), MODEL_RULES, "model setting")
        try:
            ModelConfig(atomic_numbers=[1], atomic_energies=[0.0], **self.model)  # its own consistency checks
        except ValueError as error:
            raise ValueError(f"model settings: {error}") from None

    @classmethod
    def from_dict(cls, data: dict, base_dir: str | Path = ".") -> TrainingConfig:
        """Build from a plain mapping; relative paths are resolved against ``base_dir``."""
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown training settings {sorted(unknown)}; known are {sorted(known)}")
        if "train_file" not in data:
            raise ValueError("the training settings need 'train_file' (an extxyz or .h5 file of labelled structures, or a list of them)")
        config = cls(**data)
        base = Path(base_dir)
        paths = ["train_file", "valid_file", "test_file", "e0s_file", "init_checkpoint", "resume_from", "output_dir"]
        if cache_directory(config.graph_cache_dir) is not None:
            paths.append("graph_cache_dir")
        for name in paths:
            value = getattr(config, name)
            if isinstance(value, list):
                setattr(config, name, [os.path.normpath(base / Path(item).expanduser()) for item in value])
            elif value is not None:
                setattr(config, name, os.path.normpath(base / Path(value).expanduser()))
        return config

    @classmethod
    def from_yaml(cls, path: str | Path) -> TrainingConfig:
        path = Path(path)
        try:
            data = yaml.load(path.read_text(), Loader=_YAMLLoader)
        except (OSError, yaml.YAMLError) as error:
            raise ValueError(f"cannot read training settings from {path}: {error}") from error
        if not isinstance(data, dict):
            raise ValueError(f"{path} must hold a mapping of training settings, found {type(data).__name__}")
        try:
            return cls.from_dict(data, base_dir=path.parent)
        except ValueError as error:
            raise ValueError(f"{path}: {error}") from None

    def to_dict(self) -> dict:
        return asdict(self)


def _atomic_number(key: object) -> int:
    """An ``atomic_energies`` key as int (JSON and AiiDA Dict keys are strings such as ``"29"``)."""
    if isinstance(key, int) and not isinstance(key, bool):
        return key
    if isinstance(key, str) and key.strip().isdigit():
        return int(key)
    raise ValueError(f"training setting atomic_energies: key {key!r} is not an atomic number")
