"""Checkpoints: weights, hyperparameters, species, cutoff, E0s and data statistics in one file.

Saved with ``torch.save`` holding only tensors and plain Python values, and loaded with
``torch.load(weights_only=True)``, which never executes code from the file.
"""

from __future__ import annotations

from pathlib import Path

import torch

from .decomposition import stored_factor_ranks
from .potential import CartesianTensorPotential, ModelConfig

FORMAT_NAME = "tace-aiida-potential"
FORMAT_VERSION = 1
#: Model settings whose default changed after checkpoints were written without them: the value those
#: checkpoints were trained with (messages were divided by the mean neighbour count before 2026-12-03).
SETTINGS_BEFORE_THEY_EXISTED = {"message_normalization": "mean"}


class CheckpointError(ValueError):
    """A file that is not a readable checkpoint of this format and version."""


def save_checkpoint(
    path: str | Path, model: CartesianTensorPotential, metadata: dict | None = None,
    feature_uncertainty: dict | None = None,
) -> Path:
    """Write ``model`` to ``path`` (written to a temporary name first, then renamed).

    ``metadata`` holds plain values only (numbers, strings, lists, dicts): training settings,
    metrics, seeds. The weights are stored in the model's dtype, on the CPU.
    ``feature_uncertainty`` is the state of a fitted
    :class:`~tace_aiida.model.feature_uncertainty.FeatureUncertainty`, kept under that key.
    """
    path = Path(path)
    payload = {
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        "model_config": model.config.to_dict(),
        "dtype": str(next(model.parameters()).dtype).removeprefix("torch."),
        "state_dict": {key: value.detach().cpu() for key, value in model.state_dict().items()},
        "metadata": metadata or {},
    }
    if feature_uncertainty is not None:
        payload["feature_uncertainty"] = feature_uncertainty
    temporary = path.with_name(path.name + ".partial")
    torch.save(payload, temporary)
    temporary.replace(path)
    return path


def read_checkpoint(path: str | Path) -> dict:
    """The checkpoint's content as plain data, with clear errors for wrong or damaged files."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # the safe unpickler raises many kinds of error on foreign bytes
        raise CheckpointError(f"{path} is not a readable tace-aiida checkpoint (damaged or another format): {error}") from error
    if not isinstance(payload, dict) or payload.get("format") != FORMAT_NAME:
        raise CheckpointError(f"{path} is not a tace-aiida checkpoint (no '{FORMAT_NAME}' format mark)")
    if payload.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(
            f"{path} has checkpoint format version {payload.get('format_version')}; "
            f"this version of tace-aiida reads version {FORMAT_VERSION}"
        )
    return payload


def weights_only(model: CartesianTensorPotential, state_dict: dict) -> dict:
    """``state_dict`` without the model's constants (coupling tensors, index maps, E0s).

    Checkpoints written before the constants became non-persistent carry them at training
    precision; they are dropped so that the model keeps its own exact ones.
    """
    persistent = model.state_dict().keys()
    constants = {name for name, _ in model.named_buffers()} - persistent
    return {key: value for key, value in state_dict.items() if key not in constants}


def load_model(
    path: str | Path, device: str | torch.device = "cpu", dtype: torch.dtype | None = None
) -> tuple[CartesianTensorPotential, dict]:
    """(model, metadata) from a checkpoint; ``dtype`` defaults to the one it was saved in."""
    payload = read_checkpoint(path)
    dtype = dtype or getattr(torch, payload["dtype"])
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with stored_factor_ranks(payload["state_dict"]):
            model = CartesianTensorPotential(ModelConfig.from_dict({**SETTINGS_BEFORE_THEY_EXISTED, **payload["model_config"]}))
    finally:
        torch.set_default_dtype(previous)
    try:
        model.load_state_dict(weights_only(model, payload["state_dict"]))
    except RuntimeError as error:
        raise CheckpointError(f"{path}: weights do not fit the stored model settings: {error}") from error
    return model.to(device=device, dtype=dtype).eval(), payload["metadata"]
