"""Plots of an active-learning run: learning curve, uncertainty histograms, calibration (PNG)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (the backend must be chosen first)
import numpy as np  # noqa: E402
from aiida import orm  # noqa: E402


def plot_learning_curve(iterations: list[dict], path: Path) -> Path:
    """Force errors (meV/Å) against training-set size, and frame fractions per iteration."""
    figure, (errors, fractions) = plt.subplots(1, 2, figsize=(10, 4))
    sizes = [entry["dataset_size"] for entry in iterations]
    for key, label in (("valid_forces_rmse", "validation"), ("test_forces_rmse", "test")):
        values = [entry.get(key) for entry in iterations]
        if any(v is not None for v in values):
            errors.plot(sizes, [1000 * v if v is not None else np.nan for v in values], "o-", label=label)
    errors.set(xlabel="training structures", ylabel="force RMSE (meV/Å)", title="learning curve")
    if errors.lines:
        errors.legend()
    else:
        errors.text(0.5, 0.5, "no validation or test errors\n(valid_fraction 0, no test_dataset)",
                    ha="center", va="center", transform=errors.transAxes)
    steps = [entry["iteration"] for entry in iterations]
    for key, colour in (("accurate_fraction", "tab:green"), ("candidate_fraction", "tab:orange"), ("failed_fraction", "tab:red")):
        fractions.plot(steps, [entry[key] for entry in iterations], "o-", color=colour, label=key.removesuffix("_fraction"))
    fractions.set(xlabel="iteration", ylabel="fraction of explored frames", ylim=(0, 1), title="exploration")
    fractions.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return path


def plot_uncertainty_histograms(deviations: dict[int, np.ndarray], trust: tuple[float, float], path: Path) -> Path:
    """Histogram of the per-frame max force deviation (eV/Å) of each iteration, trust window marked."""
    figure, axes = plt.subplots(figsize=(6, 4))
    values = np.concatenate(list(deviations.values())) if deviations else np.zeros(1)
    bins = np.linspace(0, max(values.max(), trust[1] * 1.2), 40)
    for iteration, deviation in sorted(deviations.items()):
        axes.hist(deviation, bins=bins, histtype="step", label=f"iteration {iteration}")
    for threshold in trust:
        axes.axvline(threshold, color="k", linestyle="--")
    axes.set(xlabel="max force deviation (eV/Å)", ylabel="frames", title="ensemble uncertainty of explored frames")
    if deviations:
        axes.legend()
    else:
        axes.text(0.5, 0.5, "no frame explored", ha="center", va="center", transform=axes.transAxes)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return path


def calibration_legend(data: dict) -> str:
    """`` (ρ = 0.71, s = 2.3, area 0.12)``: rank correlation, fitted scale, miscalibration area (unscaled)."""
    parts = [f"{symbol}{data[key]:.2f}" for key, symbol in
             (("spearman", "ρ = "), ("scale", "s = "), ("miscalibration_area", "area ")) if data.get(key) is not None]
    return f" ({', '.join(parts)})" if parts else ""


def plot_calibration(iterations: list[dict], path: Path) -> Path:
    """Predicted max force deviation against the actual max force error of each new label (eV/Å)."""
    figure, axes = plt.subplots(figsize=(5, 5))
    largest = 0.0
    for entry in iterations:
        data = entry.get("calibration") or {}
        predicted, actual = data.get("predicted_max_force_std", []), data.get("actual_max_force_error", [])
        if predicted:
            label = f"iteration {entry['iteration']}" + calibration_legend(data)
            axes.scatter(predicted, actual, s=12, label=label)
            largest = max(largest, max(predicted), max(actual))
    axes.plot([0, largest], [0, largest], "k:")
    axes.set(xlabel="predicted max force deviation (eV/Å)", ylabel="actual max force error (eV/Å)",
             title="is the uncertainty trustworthy?")
    if largest:
        axes.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return path


def run_deviations(node: orm.WorkflowNode) -> dict[int, np.ndarray]:
    """Per iteration, the max force deviation of every frame explored by the run's MD calculations."""
    deviations: dict[int, list[np.ndarray]] = {}
    for link in node.base.links.get_outgoing(node_class=orm.CalcJobNode).all():
        if "_md_" in link.link_label and "trajectory" in link.node.outputs:
            iteration = int(link.link_label.split("_")[1])
            deviations.setdefault(iteration, []).append(link.node.outputs.trajectory.get_array("max_force_std"))
    return {iteration: np.concatenate(values) for iteration, values in deviations.items()}


def plot_run(node: orm.WorkflowNode, folder: Path) -> list[Path]:
    """Write ``learning_curve.png``, ``uncertainty.png`` and ``calibration.png`` for a finished run."""
    folder.mkdir(parents=True, exist_ok=True)
    iterations = node.outputs.report.get_dict()["iterations"]
    selection = node.inputs.selection.get_dict()
    trust = (selection.get("trust_low", 0.05), selection.get("trust_high", 0.3))
    return [
        plot_learning_curve(iterations, folder / "learning_curve.png"),
        plot_uncertainty_histograms(run_deviations(node), trust, folder / "uncertainty.png"),
        plot_calibration(iterations, folder / "calibration.png"),
    ]
