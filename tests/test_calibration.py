"""Calibration of the force uncertainty, checked on errors drawn from known distributions."""

from __future__ import annotations

import numpy as np
import pytest
from ase import Atoms
from ase.calculators.singlepoint import SinglePointCalculator
from tace_aiida.workflows.report import calibration

from tace_aiida.calibration import calibration_summary, fit_scale, miscalibration_area
from tace_aiida.data import TrainingSetData


def gaussian_errors(sigma: np.ndarray, scale: float, seed: int = 0) -> np.ndarray:
    """Force errors ``[n, 3]`` whose components are N(0, (scale sigma_a)^2 / 3)."""
    rng = np.random.default_rng(seed)
    return rng.normal(size=(len(sigma), 3)) * (scale * sigma / np.sqrt(3.0))[:, None]


@pytest.mark.parametrize("true_scale", [0.5, 1.0, 3.0])
def test_the_fitted_scale_recovers_the_one_the_errors_were_drawn_with(true_scale):
    sigma = np.random.default_rng(1).uniform(0.01, 0.5, size=20_000)
    errors = gaussian_errors(sigma, true_scale)
    assert fit_scale(errors, sigma) == pytest.approx(true_scale, rel=0.01)


def test_the_miscalibration_area_is_small_at_the_right_scale_and_large_at_a_wrong_one():
    sigma = np.random.default_rng(2).uniform(0.01, 0.5, size=20_000)
    errors = gaussian_errors(sigma, 3.0)
    assert miscalibration_area(errors, sigma, scale=3.0) < 0.01
    over_confident = miscalibration_area(errors, sigma, scale=1.0)
    assert over_confident > 0.2, "a third of the true spread puts far too few errors inside each interval"
    assert miscalibration_area(errors, sigma, scale=fit_scale(errors, sigma)) < 0.01


def test_heavy_tailed_errors_stay_miscalibrated_after_scaling():
    """A scale fixes the width, not the shape: Student-t errors keep a visible area."""
    rng = np.random.default_rng(3)
    sigma = np.full(20_000, 0.1)
    errors = rng.standard_t(df=2, size=(20_000, 3)) * 0.1 / np.sqrt(3.0)
    assert miscalibration_area(errors, sigma, scale=fit_scale(errors, sigma)) > 0.05


def test_atoms_without_deviation_are_left_out_and_mismatched_shapes_are_named():
    sigma = np.array([0.0, 0.2])
    errors = np.array([[5.0, 5.0, 5.0], [0.2, 0.0, 0.0]])
    assert fit_scale(errors, sigma) == pytest.approx(1.0)
    assert fit_scale(errors[:1], sigma[:1]) is None and miscalibration_area(errors[:1], sigma[:1]) is None
    with pytest.raises(ValueError, match="2 force errors but 3 deviations"):
        fit_scale(errors, np.ones(3))


def test_the_summary_ranks_frames_by_deviation_and_checks_a_scale_fitted_elsewhere():
    """Frames whose atoms have larger deviations have larger errors (drawn at twice the deviation): the rank
    correlation is high, the fitted scale is 2, and a scale of 2 from elsewhere calibrates these frames."""
    sigma = [np.full(5, level) for level in np.linspace(0.02, 0.5, 200)]
    errors = [gaussian_errors(s, 2.0, seed=i) for i, s in enumerate(sigma)]
    summary = calibration_summary([float(s.max()) for s in sigma], errors, sigma, scale_used=2.0)
    assert summary["spearman"] > 0.8
    assert summary["scale"] == pytest.approx(2.0, rel=0.1)
    assert summary["miscalibration_area_used"] < 0.05 < 0.2 < summary["miscalibration_area"]
    assert summary["actual_max_force_error"][3] == pytest.approx(np.linalg.norm(errors[3], axis=1).max())
    empty = calibration_summary([], [], [])
    assert empty["spearman"] is None and empty["scale"] is None


def labelled_frame(error: np.ndarray, sigma: np.ndarray) -> Atoms:
    """Two Cu atoms whose DFT forces differ from the ensemble's mean by ``error`` ``[2, 3]`` (eV/Å)."""
    atoms = Atoms("Cu2", positions=[[0, 0, 0], [2.5, 0, 0]])
    predicted = np.ones((2, 3))
    atoms.new_array("predicted_forces", predicted)
    atoms.new_array("predicted_forces_std", sigma)
    atoms.info["predicted_max_force_std"] = float(sigma.max())
    atoms.calc = SinglePointCalculator(atoms, energy=-1.0, forces=predicted + error)
    return atoms


def test_the_loop_report_fits_the_scale_on_the_new_labels_and_checks_the_one_it_used(aiida_profile_clean):
    sigma = np.random.default_rng(4).uniform(0.05, 0.2, size=(300, 2))
    frames = [labelled_frame(gaussian_errors(s, 2.0, seed=i), s) for i, s in enumerate(sigma)]
    frames.append(Atoms("Cu"))  # an initial structure: no prediction, left out
    frames[-1].calc = SinglePointCalculator(frames[-1], energy=0.0, forces=np.zeros((1, 3)))
    entry = calibration(TrainingSetData(frames), scale_used=2.0)
    assert len(entry["predicted_max_force_std"]) == 300
    assert entry["scale"] == pytest.approx(2.0, rel=0.05) and entry["scale_used"] == 2.0
    assert entry["miscalibration_area_used"] < 0.03 < 0.2 < entry["miscalibration_area"]
    assert entry["actual_max_force_error"][0] == pytest.approx(np.linalg.norm(frames[0].get_forces() - 1.0, axis=1).max())
