"""Restart files: the whole state of an unfinished training, so that a stopped job continues where it stopped.

Written after every epoch (to a temporary name, then renamed, so that a job killed while writing keeps the
previous one). A run given ``resume_from`` continues from the epoch after the saved one with the same weights,
optimiser moments, learning-rate schedule, averaged (EMA) weights and batch order as if it had never stopped.
Loaded with ``torch.load(weights_only=True)``, which never executes code from the file.
"""

from __future__ import annotations

from pathlib import Path

import torch

FORMAT_NAME = "tace-aiida-training-restart"
FORMAT_VERSION = 1
#: Training settings a resumed run may change: how long it runs and where it writes, not what it learns.
RESUMABLE_CHANGES = frozenset({
    "max_epochs", "time_budget", "patience", "output_dir", "progress_bar", "device", "resume_from",
    "train_file", "valid_file", "test_file", "e0s_file", "init_checkpoint", "graph_cache_dir",
})


class RestartError(ValueError):
    """A restart file that cannot be read, or that belongs to a different training."""


def save_restart(path: str | Path, state: dict) -> Path:
    """Write ``state`` (tensors, state dicts and plain values) to ``path``, replacing it only once complete."""
    path = Path(path)
    temporary = path.with_name(path.name + ".partial")
    torch.save({"format": FORMAT_NAME, "format_version": FORMAT_VERSION, **state}, temporary)
    temporary.replace(path)
    return path


def load_restart(path: str | Path, training: dict) -> dict:
    """The state saved in ``path``, after checking that it was written by a training with the settings ``training``
    (``TrainingConfig.to_dict()``) apart from :data:`RESUMABLE_CHANGES`."""
    path = Path(path)
    if not path.is_file():
        raise RestartError(f"restart file {path} does not exist")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # the safe unpickler raises many kinds of error on foreign or truncated bytes
        raise RestartError(f"{path} is not a readable training restart file (damaged or another format): {error}") from error
    if not isinstance(state, dict) or state.get("format") != FORMAT_NAME:
        raise RestartError(f"{path} is not a training restart file (no '{FORMAT_NAME}' format mark)")
    if state.get("format_version") != FORMAT_VERSION:
        raise RestartError(f"{path} has restart format version {state.get('format_version')}; "
                           f"this version of tace-aiida reads version {FORMAT_VERSION}")
    saved = state["training"]
    changed = sorted(key for key in set(saved) | set(training)
                     if key not in RESUMABLE_CHANGES and saved.get(key) != training.get(key))
    if changed:
        details = ", ".join(f"{key}: {saved.get(key)!r} -> {training.get(key)!r}" for key in changed)
        raise RestartError(f"{path} was written by a training with other settings ({details}); "
                           f"only {sorted(RESUMABLE_CHANGES)} may change when resuming")
    return state


def restart_epoch(path: str | Path) -> int:
    """The last epoch completed in the restart file ``path`` (counted from 0)."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
        return int(state["epoch"])
    except Exception as error:  # truncated, foreign or incomplete: the file cannot continue a training
        raise RestartError(f"{path} is not a readable training restart file: {error}") from error
