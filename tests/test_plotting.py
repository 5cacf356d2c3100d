"""The run's plots for a run that stopped before its first iteration ended (exit 403, say): files, no warnings."""

from __future__ import annotations

import warnings

from tace_aiida.plotting import plot_calibration, plot_learning_curve, plot_uncertainty_histograms


def test_a_run_without_iterations_plots_empty_axes_without_warnings(tmp_path):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        written = [plot_learning_curve([], tmp_path / "curve.png"),
                   plot_uncertainty_histograms({}, (0.05, 0.3), tmp_path / "uncertainty.png"),
                   plot_calibration([], tmp_path / "calibration.png")]
    assert all(path.stat().st_size > 0 for path in written)
