"""The loop's decisions on constructed reports: stage changes, stopping, failure budget, ensemble size."""

from __future__ import annotations

import pytest
from tace_aiida.workflows.decisions import (
    CONVERGED,
    MAX_ITERATIONS,
    NO_CANDIDATES,
    Decision,
    advance,
    label_failure_fraction,
    over_failure_budget,
    required_members,
)
from tace_aiida.workflows.settings import StoppingSettings

STOPPING = StoppingSettings.from_dict({"accurate_fraction": 0.9, "converged_iterations": 2, "max_iterations": 10})


def test_a_stage_needs_its_streak_of_converged_iterations():
    first = advance(0, 0, 1, accurate_fraction=0.95, candidates=3, stopping=STOPPING, stages=3)
    assert first == Decision(0, 1)
    second = advance(0, first.converged_count, 2, accurate_fraction=0.9, candidates=1, stopping=STOPPING, stages=3)
    assert second.stage == 1 and second.converged_count == 0 and second.stop_reason is None
    assert second.message == "stage 0 converged; moving on to stage 1"


def test_an_inaccurate_iteration_resets_the_streak():
    assert advance(1, 1, 5, accurate_fraction=0.5, candidates=4, stopping=STOPPING, stages=3) == Decision(1, 0)


def test_the_last_stage_converging_ends_the_run():
    assert advance(2, 1, 7, 1.0, 0, STOPPING, stages=3).stop_reason == CONVERGED


def test_no_candidates_before_convergence_ends_the_run():
    decision = advance(0, 0, 1, accurate_fraction=0.2, candidates=0, stopping=STOPPING, stages=3)
    assert decision.stop_reason == NO_CANDIDATES


def test_no_candidates_in_a_converged_iteration_goes_on_to_complete_the_streak():
    assert advance(0, 0, 1, accurate_fraction=1.0, candidates=0, stopping=STOPPING, stages=3) == Decision(0, 1)
    assert advance(0, 1, 3, accurate_fraction=0.5, candidates=0, stopping=STOPPING, stages=3).stop_reason == \
        NO_CANDIDATES, "an inaccurate iteration breaks the streak, and with nothing to label the run stops"


def test_max_iterations_ends_an_unfinished_run_but_never_overrides_convergence():
    assert advance(0, 0, 10, 0.5, 5, STOPPING, stages=2).stop_reason == MAX_ITERATIONS
    moved = advance(0, 1, 10, 0.95, 5, STOPPING, stages=2)
    assert moved.stop_reason == MAX_ITERATIONS and moved.stage == 1, "the stage change is kept in the report"
    assert advance(1, 1, 10, 0.95, 5, STOPPING, stages=2).stop_reason == CONVERGED


@pytest.mark.parametrize(("failed", "selected", "fraction", "stops"), [
    (0, 10, 0.0, False), (1, 10, 0.1, False), (2, 10, 0.2, False), (3, 10, 0.3, True),
    (None, 10, 1.0, True), (0, 0, 0.0, False),
])
def test_failure_budget(failed, selected, fraction, stops):
    assert label_failure_fraction(failed, selected) == pytest.approx(fraction)
    assert over_failure_budget(label_failure_fraction(failed, selected), STOPPING) is stops


def test_failure_budget_with_the_largest_allowed_fraction_still_stops_when_everything_failed():
    lenient = StoppingSettings.from_dict({"max_label_failure_fraction": 0.99})
    assert over_failure_budget(label_failure_fraction(5, 5), lenient)


def test_required_members_never_exceed_the_ensemble():
    assert required_members(StoppingSettings.from_dict({"min_members": 2}), 4) == 2
    assert required_members(StoppingSettings.from_dict({"min_members": 3}), 1) == 1


def test_an_adaptive_window_converges_once_its_lower_bound_stops_moving():
    stopping = StoppingSettings.from_dict({"accurate_fraction": 0.99, "converged_iterations": 2,
                                           "lower_bound_tolerance": 0.01})
    first = advance(0, 0, 1, 0.9, 10, stopping, stages=1, lower_bound_change=None)
    assert first == Decision(0, 0), "no previous bound: nothing to compare"
    moving = advance(0, 0, 2, 0.9, 10, stopping, stages=1, lower_bound_change=0.05)
    steady = advance(0, moving.converged_count, 3, 0.9, 10, stopping, stages=1, lower_bound_change=0.004)
    assert moving.converged_count == 0 and steady.converged_count == 1
    assert advance(0, 1, 4, 0.9, 10, stopping, stages=1, lower_bound_change=0.01).stop_reason == CONVERGED
    assert advance(0, 1, 4, 0.5, 10, STOPPING, stages=1, lower_bound_change=0.0) == Decision(0, 0), \
        "without a tolerance only the accurate fraction counts"
