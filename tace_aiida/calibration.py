"""Calibration of the ensemble's force uncertainty against the errors of new DFT labels.

Per atom ``a`` the ensemble predicts a mean force and a deviation ``sigma_a = sqrt(mean_m |F_m - <F>|^2)``
(eV/Å, the square root of the summed component variances); the labeller gives the force, so the error
``e_a = F_dft - <F>`` (eV/Å, ``[n_atoms, 3]``) is known. Under a Gaussian model in which each component of
``e_a`` has variance ``(s sigma_a)^2 / 3``, the scale ``s`` of largest likelihood is
``sqrt(mean_a |e_a|^2 / sigma_a^2)``: ``s`` times the ensemble's deviation is then the expected error, in
eV/Å. An ensemble of a few members is usually over-confident (``s > 1``).

The miscalibration area (Tran et al., 2020) measures how far the errors are from that model: for each
probability ``p`` of a central interval, the fraction of error components inside it, against ``p``; the
mean absolute gap over ``p`` in (0, 1) is 0 for a calibrated model and at most 0.5.
"""

from __future__ import annotations

import numpy as np
import torch
from scipy.stats import norm

from tace_aiida.model.feature_uncertainty import likelihood_scale
from tace_aiida.selection import spearman_correlation

#: Probabilities of the central intervals over which the miscalibration area is averaged.
LEVELS = np.linspace(0.01, 0.99, 99)


def standardised_errors(errors: np.ndarray, sigma: np.ndarray) -> np.ndarray:
    """Error components divided by their predicted standard deviation ``sigma_a / sqrt(3)``, ``[n, 3]`` to
    ``[3 n']`` for the ``n'`` atoms with ``sigma_a > 0`` (an atom the ensemble agrees on exactly says nothing)."""
    errors, sigma = np.asarray(errors, dtype=float).reshape(-1, 3), np.asarray(sigma, dtype=float).reshape(-1)
    if errors.shape[0] != sigma.shape[0]:
        raise ValueError(f"{errors.shape[0]} force errors but {sigma.shape[0]} deviations")
    keep = sigma > 0.0
    return (errors[keep] / (sigma[keep, None] / np.sqrt(3.0))).reshape(-1)


def fit_scale(errors: np.ndarray, sigma: np.ndarray) -> float | None:
    """The maximum-likelihood scale ``s`` of the deviations ``sigma`` ``[n]`` (eV/Å) for the force errors
    ``errors`` ``[n, 3]`` (eV/Å), as :func:`~tace_aiida.model.feature_uncertainty.likelihood_scale` fits a single
    model's; None when no atom has a deviation."""
    errors, sigma = np.asarray(errors, dtype=float).reshape(-1, 3), np.asarray(sigma, dtype=float).reshape(-1)
    if errors.shape[0] != sigma.shape[0]:
        raise ValueError(f"{errors.shape[0]} force errors but {sigma.shape[0]} deviations")
    if not (sigma > 0.0).any():
        return None
    return likelihood_scale(torch.from_numpy(sigma), torch.from_numpy(errors))


def miscalibration_area(errors: np.ndarray, sigma: np.ndarray, scale: float = 1.0) -> float | None:
    """Mean over ``LEVELS`` of |observed - expected| fraction of error components inside the central
    interval of ``N(0, (scale sigma_a)^2 / 3)``; None when no atom has a deviation."""
    z = np.abs(standardised_errors(errors, sigma)) / scale
    if not z.size:
        return None
    bounds = norm.ppf(0.5 + LEVELS / 2.0)
    observed = (z[None, :] <= bounds[:, None]).mean(axis=1)
    return float(np.abs(observed - LEVELS).mean())


def calibration_summary(predicted: list[float], errors: list[np.ndarray], sigma: list[np.ndarray],
                        scale_used: float = 1.0) -> dict:
    """How the uncertainty compared with the actual errors of some frames (eV/Å).

    Per frame: ``predicted`` max force deviation (unscaled) and ``errors`` ``[n_atoms, 3]`` and ``sigma``
    ``[n_atoms]`` per atom. Returns the frames' predicted deviations and actual max force errors and their
    rank correlation (``spearman``), and, per atom, ``scale`` fitted on these errors and the miscalibration
    area unscaled and with ``scale_used`` (a scale fitted elsewhere: an out-of-sample check of it).
    """
    actual = [float(np.linalg.norm(np.reshape(error, (-1, 3)), axis=1).max()) for error in errors]
    entry = {"predicted_max_force_std": list(predicted), "actual_max_force_error": actual,
             "spearman": spearman_correlation(np.array(predicted), np.array(actual)),
             "scale": None, "scale_used": scale_used, "miscalibration_area": None, "miscalibration_area_used": None}
    if errors:
        errors_all, sigma_all = np.concatenate(errors), np.concatenate(sigma)
        entry.update(scale=fit_scale(errors_all, sigma_all),
                     miscalibration_area=miscalibration_area(errors_all, sigma_all),
                     miscalibration_area_used=miscalibration_area(errors_all, sigma_all, scale_used))
    return entry
