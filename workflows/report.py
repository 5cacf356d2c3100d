"""The loop's per-iteration report: training errors, selection fractions, calibration, wall time."""

from __future__ import annotations

import numpy as np
from aiida import orm

from tace_aiida.data import TrainingSetData
from tace_aiida.selection import spearman_correlation


def calibration(labelled: TrainingSetData) -> dict:
    """Predicted max force deviation against the actual max force error of each new label (eV/Å)."""
    predicted, actual = [], []
    for atoms in labelled.get_atoms():
        if "predicted_forces" not in atoms.arrays:
            continue
        error = np.linalg.norm(atoms.arrays["predicted_forces"] - atoms.get_forces(), axis=1).max()
        predicted.append(float(atoms.info["predicted_max_force_std"]))
        actual.append(float(error))
    return {"predicted_max_force_std": predicted, "actual_max_force_error": actual,
            "spearman": spearman_correlation(np.array(predicted), np.array(actual))}


def mean_metric(training_metrics: list[dict], key: str, source: str = "best") -> float | None:
    """The members' mean of ``metrics[source][key]`` (eV/Å or eV/atom), None when no member has it."""
    values = [metrics.get(source, {}).get(key) for metrics in training_metrics]
    values = [value for value in values if value is not None]
    return float(np.mean(values)) if values else None


def wall_seconds(nodes: list[orm.ProcessNode]) -> float:
    """The longest creation-to-last-change time of ``nodes`` (s): the step's wall time when they ran in parallel."""
    return max(((node.mtime - node.ctime).total_seconds() for node in nodes), default=0.0)


def iteration_entry(*, iteration: int, stage: int, dataset_size: int, dataset_size_after: int, members: int,
                    training_metrics: list[dict], selection: dict, label_failures: int, md_failures: int,
                    md_stop_reasons: list[str], calibration_data: dict | None,
                    steps: dict[str, list[orm.ProcessNode]]) -> dict:
    """One iteration's entry of the ``report`` output (plain values only)."""
    return {
        "iteration": iteration,
        "stage": stage,
        "dataset_size": dataset_size,
        "dataset_size_after": dataset_size_after,
        "members": members,
        "valid_forces_rmse": mean_metric(training_metrics, "valid_forces_rmse"),
        "valid_energy_per_atom_rmse": mean_metric(training_metrics, "valid_energy_per_atom_rmse"),
        "test_forces_rmse": mean_metric(training_metrics, "forces_rmse", "test"),
        "test_energy_per_atom_rmse": mean_metric(training_metrics, "energy_per_atom_rmse", "test"),
        "frames": selection["frames"],
        "accurate_fraction": selection["accurate_fraction"],
        "candidate_fraction": selection["candidate_fraction"],
        "failed_fraction": selection["failed_fraction"],
        "selected": selection["selected"],
        "label_failures": label_failures,
        "md_failures": md_failures,
        "md_stop_reasons": md_stop_reasons,
        "calibration": calibration_data or {},
        "wall_seconds": {kind: wall_seconds(nodes) for kind, nodes in steps.items()},
    }
