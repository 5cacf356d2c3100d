"""Choosing which explored frames to label: trust window on the ensemble deviation, then diversity.

Pure numpy / scikit-learn; the calcfunction :func:`tace_aiida.calculations.selection.select_frames`
records every choice in the provenance graph.

Conventions (DP-GEN): the model deviation of a frame is the max over atoms of the standard
deviation of the ensemble's forces (eV/Å). Below ``trust_low`` a frame is *accurate*, above
``trust_high`` *failed* (unphysical: never labelled, only counted), in between a *candidate*.
With ``relative=True`` each atom's deviation is divided by its mean force magnitude plus
``relative_epsilon`` (eV/Å) first, so the thresholds are dimensionless.

An adaptive window (dpgen2's adaptive lower bound) raises the lower bound so that only the
``adaptive_candidates`` (or ``adaptive_fraction`` of the frames, whichever is more) most uncertain frames
below ``trust_high`` are candidates; ``trust_low`` is then a floor (0: none). The loop then also counts an
iteration as converged once that bound moves less than ``StoppingSettings.lower_bound_tolerance``.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields

import numpy as np
from scipy.spatial.distance import pdist
from scipy.stats import spearmanr
from sklearn.cluster import KMeans
from sklearn.preprocessing import StandardScaler

from tace_aiida.model.validation import Rule, at_least, check_dataclass, greater_than, one_of, within

ACCURATE, CANDIDATE, FAILED = "accurate", "candidate", "failed"
DIVERSITY_METHODS = ("kmeans", "fps", "maxdet", "lcmd", "none")
#: Where the force deviation comes from (:class:`tace_aiida.model.calculator.TACECalculator`).
UNCERTAINTY_SOURCES = ("ensemble", "features")

#: Ranges of the settings (eV/Å, or dimensionless when ``relative``); trust_high may be inf.
RULES: dict[str, Rule] = {
    "trust_low": at_least(0.0), "trust_high": greater_than(0.0), "relative_epsilon": greater_than(0.0),
    "adaptive_candidates": at_least(0), "adaptive_fraction": within(0.0, 1.0),
    "max_selected": at_least(1), "diversity": one_of(*DIVERSITY_METHODS), "seed": at_least(0),
    "uncertainty": one_of(*UNCERTAINTY_SOURCES),
}


@dataclass
class TrustWindow:
    """Thresholds of the model deviation: eV/Å, or dimensionless when ``relative``; adaptive when
    ``adaptive_candidates`` or ``adaptive_fraction`` is above 0 (then ``trust_low`` is a floor)."""

    trust_low: float = 0.05
    trust_high: float = 0.3
    relative: bool = False
    relative_epsilon: float = 1.0
    adaptive_candidates: int = 0
    adaptive_fraction: float = 0.0

    @property
    def adaptive(self) -> bool:
        return self.adaptive_candidates > 0 or self.adaptive_fraction > 0.0

    def __post_init__(self) -> None:
        check_dataclass(self, RULES, "selection setting")
        if not self.trust_low < self.trust_high:
            raise ValueError(f"selection setting trust_low={self.trust_low} must be < trust_high={self.trust_high}")


@dataclass
class SelectionSettings:
    """How candidates are chosen: at most ``max_selected`` per call, ``diversity`` one of ``DIVERSITY_METHODS``.

    With ``calibrate`` the loop multiplies every deviation by the scale fitted on the previous iteration's
    labels (:mod:`tace_aiida.calibration`) before the trust window applies, so thresholds are expected errors.

    ``uncertainty`` is where the deviation comes from: ``ensemble``, the members' force spread, or
    ``features``, each member's expected force error from its own features
    (:mod:`tace_aiida.model.feature_uncertainty`), which works with one member.
    """

    window: TrustWindow = field(default_factory=TrustWindow)
    family_windows: dict[str, TrustWindow] = field(default_factory=dict)
    max_selected: int = 20
    diversity: str = "kmeans"
    seed: int = 1
    calibrate: bool = False
    uncertainty: str = "ensemble"

    def __post_init__(self) -> None:
        check_dataclass(self, RULES, "selection setting")

    @classmethod
    def from_dict(cls, data: dict) -> SelectionSettings:
        """From a flat mapping: the window's settings, ``families`` (name -> window settings) and the rest."""
        data = dict(data)
        window_keys = {f.name for f in fields(TrustWindow)}
        known = window_keys | {"families", "max_selected", "diversity", "seed", "calibrate", "uncertainty"}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown selection settings {sorted(unknown)}; known are {sorted(known)}")
        window = TrustWindow(**{k: data.pop(k) for k in list(data) if k in window_keys})
        families = data.pop("families", {})
        if not isinstance(families, dict):
            raise ValueError(f"selection setting families: {families!r} is not a mapping of family name to trust window")
        windows = {name: family_window(name, values, window_keys) for name, values in families.items()}
        return cls(window=window, family_windows=windows, **data)

    def window_for(self, family: str | None) -> TrustWindow:
        return self.family_windows.get(family, self.window) if family else self.window


def family_window(name: str, values: object, window_keys: set[str]) -> TrustWindow:
    """The trust window of family ``name``; errors name the family."""
    if not isinstance(values, dict) or set(values) - window_keys:
        raise ValueError(f"selection family {name!r}: {values!r} is not a mapping of {sorted(window_keys)}")
    try:
        return TrustWindow(**values)
    except ValueError as error:
        raise ValueError(f"selection family {name!r}: {error}") from None


def frame_deviation(forces: np.ndarray, forces_std: np.ndarray, window: TrustWindow) -> np.ndarray:
    """Per-frame model deviation ``[n_frames]`` from mean forces ``[F, N, 3]`` and per-atom std ``[F, N]``."""
    if window.relative:
        magnitude = np.linalg.norm(forces, axis=-1)
        return (forces_std / (magnitude + window.relative_epsilon)).max(axis=-1)
    return forces_std.max(axis=-1)


def lower_bound(deviation: np.ndarray, window: TrustWindow) -> float:
    """The window's lower bound for these deviations ``[n_frames]``: ``trust_low``, or, when adaptive, the
    deviation of the last of the most uncertain frames below ``trust_high`` that may be candidates (at
    least ``trust_low``)."""
    below_high = np.sort(deviation[deviation <= window.trust_high])[::-1]
    if not window.adaptive or below_high.size == 0:
        return window.trust_low
    count = max(window.adaptive_candidates, int(np.ceil(window.adaptive_fraction * deviation.size)))
    return max(window.trust_low, float(below_high[min(count, below_high.size) - 1]))


def classify(deviation: np.ndarray, window: TrustWindow, low: float | None = None) -> np.ndarray:
    """``accurate`` / ``candidate`` / ``failed`` for each frame's deviation; ``low`` replaces ``trust_low``."""
    labels = np.full(deviation.shape, CANDIDATE, dtype=object)
    labels[deviation < (window.trust_low if low is None else low)] = ACCURATE
    labels[deviation > window.trust_high] = FAILED
    return labels


def farthest_point_sampling(points: np.ndarray, count: int, first: int) -> list[int]:
    """Indices of ``count`` points, each the farthest (Euclidean) from those already chosen."""
    chosen = [first]
    distance = np.linalg.norm(points - points[first], axis=1)
    while len(chosen) < min(count, len(points)):
        index = int(distance.argmax())
        chosen.append(index)
        distance = np.minimum(distance, np.linalg.norm(points - points[index], axis=1))
    return chosen


def uncertainty_weighted_max_determinant(points: np.ndarray, deviation: np.ndarray, count: int) -> list[int]:
    """Indices of ``count`` points chosen greedily to maximise the determinant of their kernel matrix.

    The kernel ``k(i, j) = u_i u_j exp(-|x_i - x_j|^2 / 2 l^2)`` weights a Gaussian similarity of the
    points ``[n, d]`` by their deviations ``u`` ``[n]`` (eV/Å), with ``l`` the median distance between
    points: a batch of uncertain frames that are unlike one another (a determinantal point process, as in
    batch active learning with gradient features; MAXDET). The greedy choice is a pivoted Cholesky
    factorisation: each pick is the point of largest variance left after conditioning on the picks so far,
    so the first is the most uncertain and a near copy of a pick is worth little.
    """
    count = min(count, len(points))
    if count == 0:
        return []
    length = median_distance(points)
    remaining = deviation.astype(float) ** 2
    factors = np.zeros((len(points), count))
    taken = np.zeros(len(points), dtype=bool)
    chosen: list[int] = []
    for step in range(count):
        pivot = int(np.argmax(np.where(taken, -np.inf, remaining)))
        chosen.append(pivot)
        taken[pivot] = True
        if remaining[pivot] <= 0.0:
            continue
        similarity = np.exp(-((points - points[pivot]) ** 2).sum(axis=1) / (2.0 * length**2))
        column = deviation * deviation[pivot] * similarity - factors[:, :step] @ factors[pivot, :step]
        factors[:, step] = column / np.sqrt(remaining[pivot])
        remaining = np.maximum(remaining - factors[:, step] ** 2, 0.0)
    return chosen


def largest_cluster_max_distance(points: np.ndarray, count: int, first: int) -> list[int]:
    """Indices of ``count`` points by LCMD: each point belongs to its nearest chosen point; the next pick is
    the member farthest from its centre in the cluster with the largest sum of squared distances.

    Unlike farthest-point sampling, the far edge of a small group does not win over a large, spread-out region.
    """
    chosen = [first]
    distance = np.linalg.norm(points - points[first], axis=1)
    nearest = np.zeros(len(points), dtype=int)
    while len(chosen) < min(count, len(points)):
        spread = np.bincount(nearest, weights=distance**2, minlength=len(chosen))
        members = np.flatnonzero(nearest == int(spread.argmax()))
        index = int(members[distance[members].argmax()])
        chosen.append(index)
        to_new = np.linalg.norm(points - points[index], axis=1)
        closer = to_new < distance
        nearest[closer], distance[closer] = len(chosen) - 1, to_new[closer]
    return chosen


def median_distance(points: np.ndarray, sample: int = 1000) -> float:
    """Median Euclidean distance between points (of at most ``sample`` of them); 1 when all coincide."""
    subset = points[np.linspace(0, len(points) - 1, min(sample, len(points))).astype(int)]
    distances = pdist(subset)
    positive = distances[distances > 0.0]
    return float(np.median(positive)) if positive.size else 1.0


def pick_diverse(descriptors: np.ndarray, deviation: np.ndarray, settings: SelectionSettings) -> list[int]:
    """Up to ``max_selected`` of the candidates (rows), diverse in descriptor space.

    ``kmeans``: cluster the standardised descriptors into ``max_selected`` groups and take the most
    uncertain frame of each; ``fps``: farthest-point sampling starting from the most uncertain;
    ``lcmd``: largest cluster, maximum distance, starting from the most uncertain; ``maxdet``: the
    greedy maximum determinant of the uncertainty-weighted kernel; ``none``: the most uncertain ones.
    Returned most uncertain first.
    """
    count = min(settings.max_selected, len(deviation))
    if count == 0:
        return []
    by_uncertainty = list(np.argsort(-deviation, kind="stable"))
    if settings.diversity == "none" or count == len(deviation):
        return [int(i) for i in by_uncertainty[:count]]
    scaled = StandardScaler().fit_transform(descriptors)
    if settings.diversity == "fps":
        chosen = farthest_point_sampling(scaled, count, first=by_uncertainty[0])
    elif settings.diversity == "lcmd":
        chosen = largest_cluster_max_distance(scaled, count, first=by_uncertainty[0])
    elif settings.diversity == "maxdet":
        chosen = uncertainty_weighted_max_determinant(scaled, deviation, count)
    else:
        clusters = KMeans(n_clusters=count, n_init=4, random_state=settings.seed).fit_predict(scaled)
        chosen = [max(np.flatnonzero(clusters == c), key=lambda i: deviation[i]) for c in np.unique(clusters)]
    return sorted((int(i) for i in chosen), key=lambda i: -deviation[i])


def spearman_correlation(predicted: np.ndarray, actual: np.ndarray) -> float | None:
    """Rank correlation of predicted deviation and actual error; None for fewer than 3 pairs."""
    if len(predicted) < 3:
        return None
    value = spearmanr(predicted, actual).statistic
    return None if np.isnan(value) else float(value)
