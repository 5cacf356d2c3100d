"""The loop's decisions after each iteration, as plain functions of its report (unit-tested on their own).

Stages advance as in dpgen2: once the accurate fraction of a stage's frames reaches the target (or,
with an adaptive trust window, its lower bound stops moving) for ``converged_iterations`` iterations in
a row, the next stage begins; the run has converged when the last stage has.
"""

from __future__ import annotations

from dataclasses import dataclass

from .settings import StoppingSettings

CONVERGED, NO_CANDIDATES, MAX_ITERATIONS = "converged", "no_candidates", "max_iterations"


@dataclass(frozen=True)
class Decision:
    """Where the loop stands after an iteration: the stage to explore next, the stage's streak of
    converged iterations, why the run stops (None: go on), and a line for the process report."""

    stage: int
    converged_count: int
    stop_reason: str | None = None
    message: str | None = None


def advance(stage: int, converged_count: int, iteration: int, accurate_fraction: float, candidates: int,
            stopping: StoppingSettings, stages: int, lower_bound_change: float | None = None) -> Decision:
    """The decision after ``iteration`` (1-based) of stage ``stage`` (0-based, of ``stages``);
    ``lower_bound_change`` (eV/Å) is how far the trust window's lower bound moved since the stage's
    previous iteration (None: no previous one).

    An iteration without candidates that did not converge stops the run (``NO_CANDIDATES``: every frame not accurate
    lies beyond the trust window, so there is nothing to label and the next iteration would explore with the same
    ensemble); one that converged but has not completed its stage's streak goes on."""
    converged_count = converged_count + 1 if iteration_converged(accurate_fraction, lower_bound_change, stopping) else 0
    if converged_count >= stopping.converged_iterations:
        if stage + 1 < stages:
            decision = Decision(stage + 1, 0, message=f"stage {stage} converged; moving on to stage {stage + 1}")
        else:
            decision = Decision(stage, converged_count, CONVERGED)
    elif candidates == 0 and converged_count == 0:
        decision = Decision(stage, converged_count, NO_CANDIDATES)
    else:
        decision = Decision(stage, converged_count)
    if decision.stop_reason is None and iteration >= stopping.max_iterations:
        return Decision(decision.stage, decision.converged_count, MAX_ITERATIONS, decision.message)
    return decision


def iteration_converged(accurate_fraction: float, lower_bound_change: float | None, stopping: StoppingSettings) -> bool:
    """Whether an iteration counts towards its stage's convergence streak."""
    if accurate_fraction >= stopping.accurate_fraction:
        return True
    tolerance = stopping.lower_bound_tolerance
    return tolerance is not None and lower_bound_change is not None and lower_bound_change <= tolerance


def label_failure_fraction(num_failed: int | None, num_selected: int) -> float:
    """The fraction of a selection that could not be labelled; all of it when the labeller gave no report."""
    if num_selected == 0:
        return 0.0
    return 1.0 if num_failed is None else num_failed / num_selected


def over_failure_budget(fraction: float, stopping: StoppingSettings) -> bool:
    """Whether the run must stop (exit 402): more than ``max_label_failure_fraction`` of a selection failed."""
    return fraction > stopping.max_label_failure_fraction


def required_members(stopping: StoppingSettings, ensemble_size: int) -> int:
    """How many members must train for the loop to go on (exit 403 below it)."""
    return min(stopping.min_members, ensemble_size)
