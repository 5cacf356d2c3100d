"""Choosing which explored frames to label: trust window on the ensemble deviation, then diversity.

Pure numpy / scikit-learn; the calcfunction :func:`tace_aiida.calculations.selection.select_frames`
records every choice in the provenance graph.

Conventions (DP-GEN): the model deviation of a frame is the max over atoms of the standard
deviation of the ensemble's forces (eV/Å). Below ``trust_low`` a frame is *accurate*, above
``trust_high`` *failed* (unphysical: never labelled, only counted), in between a *candidate*.
With ``relative=True`` each atom's deviation is divided by its mean force magnitude plus
``relative_epsilon`` (eV/Å) first, so the thresholds are dimensionless.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy.stats import spearmanr
from sklearn.cluster import KMeans
from sklearn.preprocessing import StandardScaler

ACCURATE, CANDIDATE, FAILED = "accurate", "candidate", "failed"


@dataclass
class TrustWindow:
    """Thresholds of the model deviation: eV/Å, or dimensionless when ``relative``."""

    trust_low: float = 0.05
    trust_high: float = 0.3
    relative: bool = False
    relative_epsilon: float = 1.0

    def __post_init__(self) -> None:
        if not 0 <= self.trust_low < self.trust_high:
            raise ValueError(f"need 0 <= trust_low < trust_high, got {self.trust_low} and {self.trust_high}")


@dataclass
class SelectionSettings:
    """How candidates are chosen: at most ``max_selected`` per call, ``diversity`` kmeans, fps or none."""

    window: TrustWindow = field(default_factory=TrustWindow)
    family_windows: dict[str, TrustWindow] = field(default_factory=dict)
    max_selected: int = 20
    diversity: str = "kmeans"
    seed: int = 1

    def __post_init__(self) -> None:
        if self.diversity not in ("kmeans", "fps", "none"):
            raise ValueError(f"diversity must be kmeans, fps or none, not {self.diversity!r}")
        if self.max_selected < 0:
            raise ValueError(f"max_selected must be >= 0, not {self.max_selected}")

    @classmethod
    def from_dict(cls, data: dict) -> "SelectionSettings":
        data = dict(data)
        window = TrustWindow(**{k: data.pop(k) for k in list(data) if k in TrustWindow.__dataclass_fields__})
        families = {name: TrustWindow(**values) for name, values in data.pop("families", {}).items()}
        return cls(window=window, family_windows=families, **data)

    def window_for(self, family: str | None) -> TrustWindow:
        return self.family_windows.get(family, self.window) if family else self.window


def frame_deviation(forces: np.ndarray, forces_std: np.ndarray, window: TrustWindow) -> np.ndarray:
    """Per-frame model deviation ``[n_frames]`` from mean forces ``[F, N, 3]`` and per-atom std ``[F, N]``."""
    if window.relative:
        magnitude = np.linalg.norm(forces, axis=-1)
        return (forces_std / (magnitude + window.relative_epsilon)).max(axis=-1)
    return forces_std.max(axis=-1)


def classify(deviation: np.ndarray, window: TrustWindow) -> np.ndarray:
    """``accurate`` / ``candidate`` / ``failed`` for each frame's deviation."""
    labels = np.full(deviation.shape, CANDIDATE, dtype=object)
    labels[deviation < window.trust_low] = ACCURATE
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


def pick_diverse(descriptors: np.ndarray, deviation: np.ndarray, settings: SelectionSettings) -> list[int]:
    """Up to ``max_selected`` of the candidates (rows), diverse in descriptor space.

    ``kmeans``: cluster the standardised descriptors into ``max_selected`` groups and take the most
    uncertain frame of each; ``fps``: farthest-point sampling starting from the most uncertain;
    ``none``: the most uncertain ones. Returned most uncertain first.
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
