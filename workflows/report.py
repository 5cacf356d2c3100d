"""The loop's per-iteration report: training errors, selection fractions, calibration, wall time."""

from __future__ import annotations

import numpy as np
from aiida import orm

from tace_aiida.calibration import calibration_summary
from tace_aiida.data import TrainingSetData


def calibration(labelled: TrainingSetData, scale_used: float = 1.0) -> dict:
    """How the ensemble's uncertainty compared with the errors of the new labels (eV/Å).

    Per frame: the predicted max force deviation (unscaled) and the actual max force error, and their rank
    correlation. Per atom: ``scale``, the calibration's scale fitted on these labels, and the miscalibration
    area unscaled and with ``scale_used`` (the scale fitted one iteration earlier, which the selection of
    these frames used: an out-of-sample check of the calibration).
    """
    predicted, errors, sigma = [], [], []
    for atoms in labelled.get_atoms():
        if "predicted_forces" not in atoms.arrays:
            continue
        predicted.append(float(atoms.info["predicted_max_force_std"]))
        errors.append(atoms.get_forces() - atoms.arrays["predicted_forces"])
        sigma.append(atoms.arrays["predicted_forces_std"])
    return calibration_summary(predicted, errors, sigma, scale_used)


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
        "lower_bounds": selection["lower_bounds"],
        "selected": selection["selected"],
        "label_failures": label_failures,
        "md_failures": md_failures,
        "md_stop_reasons": md_stop_reasons,
        "calibration": calibration_data or {},
        "wall_seconds": {kind: wall_seconds(nodes) for kind, nodes in steps.items()},
    }
