"""tace-aiida's Cartesian-tensor potential as a runner of the 3BPA benchmark."""

from __future__ import annotations

import json
from pathlib import Path

from ase import Atoms
from ase.io import write
from tace_aiida.model.calculator import TACECalculator
from tace_aiida.model.config import TrainingConfig
from tace_aiida.model.training import train

from benchmarks.common import MatchedSettings, TrainedModel, read_e0s

NAME = "tace-aiida"


def tace_config(settings: MatchedSettings, workdir: Path, e0s: dict[int, float] | None = None,
                model_options: dict | None = None) -> TrainingConfig:
    """Training settings of tace-aiida that match ``settings`` (see :class:`MatchedSettings`); E0s (eV) ``e0s``,
    else from 3BPA's ``iso_atoms.xyz``; ``model_options`` adds model settings beyond the matched ones."""
    return TrainingConfig(
        train_file=str(workdir / "train.xyz"),
        valid_file=str(workdir / "valid.xyz"),
        atomic_energies=e0s if e0s is not None else read_e0s(),
        model={
            "num_interactions": settings.num_layers,
            "r_max": settings.r_max,
            "max_edge_rank": settings.max_edge_rank,
            "max_hidden_rank": settings.hidden_rank,
            "channels": settings.channels,
            "correlation": settings.correlation,
            "num_bessel": settings.num_bessel,
            "envelope_p": settings.polynomial_p,
            "radial_mlp": list(settings.radial_mlp),
            "bessel_trainable": not settings.fixed_bessel_frequencies,
            **(model_options or {}),
        },
        energy_weight=settings.energy_weight,
        forces_weight=settings.forces_weight,
        lr=settings.lr,
        weight_decay=settings.weight_decay,
        clip_grad_norm=settings.clip_grad_norm,
        amsgrad=settings.amsgrad,
        ema_decay=settings.ema_decay,
        scheduler_patience=settings.scheduler_patience,
        stage_two={"start": settings.stage_two_start} if settings.stage_two_start is not None else None,
        batch_size=settings.batch_size,
        valid_batch_size=settings.batch_size,
        max_epochs=settings.epochs,
        time_budget=settings.time_budget_s,
        patience=settings.epochs,
        seed=settings.seed,
        device="cpu",
        dtype=settings.dtype,
        output_dir=str(workdir),
        progress_bar=False,
    )


def train_tace(train_frames: list[Atoms], valid: list[Atoms], settings: MatchedSettings, workdir: Path,
               e0s: dict[int, float] | None = None, model_options: dict | None = None) -> TrainedModel:
    """Train tace-aiida's potential with ``settings`` in ``workdir``; E0s and ``model_options`` as in
    :func:`tace_config`."""
    workdir.mkdir(parents=True, exist_ok=True)
    write(workdir / "train.xyz", train_frames, format="extxyz")
    write(workdir / "valid.xyz", valid, format="extxyz")
    summary = train(tace_config(settings, workdir, e0s, model_options))
    epochs = [json.loads(line) for line in Path(summary["metrics_file"]).read_text().splitlines()]
    return TrainedModel(
        name=NAME,
        calculator=TACECalculator(summary["checkpoint"], device="cpu"),
        seconds_per_epoch=sum(e["epoch_seconds"] for e in epochs) / len(epochs),
        epochs_run=len(epochs),
    )
