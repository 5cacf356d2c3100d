"""Selection: trust window, relative deviation, diversity, rank correlation."""

from __future__ import annotations

import numpy as np
import pytest

from tace_aiida.selection import (
    ACCURATE,
    CANDIDATE,
    FAILED,
    SelectionSettings,
    TrustWindow,
    classify,
    farthest_point_sampling,
    frame_deviation,
    largest_cluster_max_distance,
    lower_bound,
    pick_diverse,
    spearman_correlation,
    uncertainty_weighted_max_determinant,
)


def test_trust_window_classes():
    window = TrustWindow(trust_low=0.1, trust_high=0.3)
    labels = classify(np.array([0.05, 0.1, 0.2, 0.3, 0.31]), window)
    assert labels.tolist() == [ACCURATE, CANDIDATE, CANDIDATE, CANDIDATE, FAILED]
    with pytest.raises(ValueError, match="selection setting trust_low=0.3 must be < trust_high=0.1"):
        TrustWindow(trust_low=0.3, trust_high=0.1)


def test_a_fixed_window_keeps_its_lower_bound():
    assert lower_bound(np.array([0.01, 0.2, 0.4]), TrustWindow(trust_low=0.1, trust_high=0.3)) == 0.1


def test_an_adaptive_window_lets_only_the_most_uncertain_frames_below_trust_high_be_candidates():
    deviation = np.array([0.02, 0.05, 0.5, 0.09, 0.12, 0.2, 0.01, 0.07])
    window = TrustWindow(trust_low=0.0, trust_high=0.3, adaptive_candidates=3)
    assert lower_bound(deviation, window) == 0.09, "0.5 is above trust_high; of the rest 0.2, 0.12, 0.09 are the top three"
    classes = classify(deviation, window, low=lower_bound(deviation, window))
    assert (classes == CANDIDATE).sum() == 3 and (classes == FAILED).sum() == 1
    by_fraction = TrustWindow(trust_low=0.0, trust_high=0.3, adaptive_fraction=0.5)
    assert lower_bound(deviation, by_fraction) == 0.07, "half of 8 frames: the top 4 below 0.3"
    floored = TrustWindow(trust_low=0.1, trust_high=0.3, adaptive_candidates=3)
    assert lower_bound(deviation, floored) == 0.1, "trust_low stays a floor"
    assert lower_bound(deviation, TrustWindow(trust_low=0.0, trust_high=0.3, adaptive_candidates=50)) == 0.01
    assert lower_bound(np.array([0.4, 0.5]), window) == 0.0, "nothing below trust_high: trust_low"


def test_absolute_and_relative_deviation():
    forces = np.array([[[3.0, 4.0, 0.0], [0.0, 0.0, 0.0]]])
    forces_std = np.array([[0.6, 0.2]])
    assert frame_deviation(forces, forces_std, TrustWindow()) == pytest.approx([0.6])
    relative = TrustWindow(trust_low=0.05, trust_high=0.5, relative=True, relative_epsilon=1.0)
    assert frame_deviation(forces, forces_std, relative) == pytest.approx([max(0.6 / 6.0, 0.2 / 1.0)])


def test_diversity_prefers_distinct_clusters_and_high_uncertainty():
    rng = np.random.default_rng(0)
    centres = np.array([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]])
    descriptors = np.concatenate([c + 0.1 * rng.normal(size=(20, 2)) for c in centres])
    deviation = rng.random(60)
    for method in ("kmeans", "fps", "lcmd", "maxdet"):
        chosen = pick_diverse(descriptors, deviation, SelectionSettings(max_selected=3, diversity=method))
        assert sorted(i // 20 for i in chosen) == [0, 1, 2], method
    chosen = pick_diverse(descriptors, deviation, SelectionSettings(max_selected=3, diversity="kmeans"))
    for index in chosen:
        cluster = index // 20
        assert deviation[index] == deviation[20 * cluster : 20 * (cluster + 1)].max()
    assert pick_diverse(descriptors, deviation, SelectionSettings(max_selected=2, diversity="none")) == list(np.argsort(-deviation)[:2])
    assert pick_diverse(np.zeros((0, 0)), np.zeros(0), SelectionSettings()) == []


def test_farthest_point_sampling_spreads_out():
    points = np.array([[0.0], [1.0], [2.0], [10.0]])
    assert farthest_point_sampling(points, 3, first=0) == [0, 3, 2]


def test_max_determinant_starts_with_the_most_uncertain_and_skips_near_copies():
    """Two near copies of the most uncertain frame are worth one: the second pick is elsewhere, though it is
    less uncertain than the copy; a determinant over the batch is larger for distinct frames."""
    points = np.array([[0.0, 0.0], [0.001, 0.0], [5.0, 0.0], [0.0, 5.0], [5.0, 5.0]])
    deviation = np.array([1.0, 0.99, 0.5, 0.4, 0.3])
    chosen = uncertainty_weighted_max_determinant(points, deviation, 3)
    assert chosen[0] == 0 and 1 not in chosen
    assert sorted(chosen[1:]) == [2, 3]


def test_max_determinant_picks_maximise_the_kernel_determinant_among_greedy_alternatives():
    """Each greedy pick is the one that makes the determinant of the chosen kernel block largest."""
    rng = np.random.default_rng(3)
    points, deviation = rng.normal(size=(12, 3)), rng.uniform(0.1, 1.0, size=12)
    chosen = uncertainty_weighted_max_determinant(points, deviation, 4)
    distances = ((points[:, None] - points[None]) ** 2).sum(-1)
    length = np.median(np.sqrt(distances[distances > 0]))
    kernel = np.outer(deviation, deviation) * np.exp(-distances / (2 * length**2))
    for step in range(1, 4):
        determinant = {i: np.linalg.det(kernel[np.ix_(chosen[:step] + [i], chosen[:step] + [i])])
                       for i in range(12) if i not in chosen[:step]}
        assert chosen[step] == max(determinant, key=determinant.get)


def test_max_determinant_with_identical_points_still_returns_distinct_indices():
    chosen = uncertainty_weighted_max_determinant(np.zeros((4, 2)), np.array([0.1, 0.4, 0.2, 0.3]), 3)
    assert chosen[0] == 1 and len(set(chosen)) == 3


def test_lcmd_splits_a_large_spread_region_before_a_small_group():
    """After a far pair is reached, farthest-point sampling takes its second point (3 away); LCMD takes a point
    of the 200-frame region (at most 2.9 from its centre), whose cluster has the larger sum of squares."""
    rng = np.random.default_rng(1)
    region = rng.uniform(0.0, 4.0, size=(200, 2))
    points = np.concatenate([[[2.0, 2.0]], region, [[20.0, 23.0], [20.0, 20.0]]])
    pair = {len(points) - 2, len(points) - 1}
    assert set(farthest_point_sampling(points, 3, first=0)[1:]) == pair
    chosen = largest_cluster_max_distance(points, 3, first=0)
    assert chosen[:2] == [0, len(points) - 2] and 1 <= chosen[2] <= 200
    assert len(set(largest_cluster_max_distance(points, 10, first=0))) == 10


def test_settings_from_dict_and_families():
    settings = SelectionSettings.from_dict({"trust_low": 0.02, "trust_high": 0.2, "max_selected": 5,
                                            "families": {"hot": {"trust_low": 0.1, "trust_high": 0.4}}})
    assert settings.window_for(None).trust_low == 0.02
    assert settings.window_for("hot").trust_high == 0.4
    assert settings.window_for("cold").trust_high == 0.2
    with pytest.raises(ValueError, match="selection setting diversity='random' must be one of 'kmeans', 'fps', 'maxdet', 'lcmd', 'none'"):
        SelectionSettings(diversity="random")


@pytest.mark.parametrize("settings,message", [
    ({"trust_low": 0.3, "trust_high": 0.3}, "selection setting trust_low=0.3 must be < trust_high=0.3"),
    ({"trust_low": -0.1}, "selection setting trust_low=-0.1 must be >= 0.0"),
    ({"trust_high": "high"}, "selection setting trust_high: 'high' is not a number"),
    ({"relative_epsilon": 0.0}, "selection setting relative_epsilon=0.0 must be > 0.0"),
    ({"relative": "yes"}, "selection setting relative: 'yes' is not true or false"),
    ({"max_selected": 0}, "selection setting max_selected=0 must be >= 1"),
    ({"max_selected": 2.5}, "selection setting max_selected: 2.5 is not an integer"),
    ({"seed": -2}, "selection setting seed=-2 must be >= 0"),
    ({"adaptive_fraction": 1.0}, "selection setting adaptive_fraction=1.0 must be in \\[0.0, 1.0\\)"),
    ({"adaptive_candidates": -1}, "selection setting adaptive_candidates=-1 must be >= 0"),
    ({"trsut_low": 0.1}, "unknown selection settings \\['trsut_low'\\]"),
    ({"families": {"hot": {"trust_low": 0.5, "trust_high": 0.4}}},
     "selection family 'hot': selection setting trust_low=0.5 must be < trust_high=0.4"),
    ({"families": {"hot": {"trust_lo": 0.5}}}, "selection family 'hot': \\{'trust_lo': 0.5\\} is not a mapping of"),
    ({"families": ["hot"]}, "selection setting families: \\['hot'\\] is not a mapping"),
])
def test_out_of_range_settings_are_named(settings, message):
    with pytest.raises(ValueError, match=message):
        SelectionSettings.from_dict(settings)
    assert TrustWindow(0.0, np.inf).trust_high == np.inf


def test_spearman():
    assert spearman_correlation(np.array([1.0, 2.0, 3.0, 4.0]), np.array([10.0, 20.0, 25.0, 40.0])) == pytest.approx(1.0)
    assert spearman_correlation(np.array([1.0, 2.0]), np.array([1.0, 2.0])) is None
