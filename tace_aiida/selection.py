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

from dataclasses import dataclass, field, fields

import numpy as np
from scipy.stats import spearmanr
from sklearn.cluster import KMeans
from sklearn.preprocessing import StandardScaler

from tace_aiida.model.validation import Rule, at_least, check_dataclass, greater_than, one_of

ACCURATE, CANDIDATE, FAILED = "accurate", "candidate", "failed"

#: Ranges of the settings (eV/Å, or dimensionless when ``relative``); trust_high may be inf.
RULES: dict[str, Rule] = {
    "trust_low": at_least(0.0), "trust_high": greater_than(0.0), "relative_epsilon": greater_than(0.0),
    "max_selected": at_least(1), "diversity": one_of("kmeans", "fps", "none"), "seed": at_least(0),
}


@dataclass
class TrustWindow:
    """Thresholds of the model deviation: eV/Å, or dimensionless when ``relative``."""

    trust_low: float = 0.05
    trust_high: float = 0.3
    relative: bool = False
    relative_epsilon: float = 1.0

    def __post_init__(self) -> None:
        check_dataclass(self, RULES, "selection setting")
        if not self.trust_low < self.trust_high:
            raise ValueError(f"selection setting trust_low={self.trust_low} must be < trust_high={self.trust_high}")


@dataclass
class SelectionSettings:
    """How candidates are chosen: at most ``max_selected`` per call, ``diversity`` kmeans, fps or none."""

    window: TrustWindow = field(default_factory=TrustWindow)
    family_windows: dict[str, TrustWindow] = field(default_factory=dict)
    max_selected: int = 20
    diversity: str = "kmeans"
    seed: int = 1

    def __post_init__(self) -> None:
        check_dataclass(self, RULES, "selection setting")

    @classmethod
    def from_dict(cls, data: dict) -> SelectionSettings:
        """From a flat mapping: the window's settings, ``families`` (name -> window settings) and the rest."""
        data = dict(data)
        window_keys = {f.name for f in fields(TrustWindow)}
        known = window_keys | {"families", "max_selected", "diversity", "seed"}
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
