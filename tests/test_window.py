"""The rolling window of children (workflows/window.py), on a stand-in workchain whose children terminate on demand."""

from __future__ import annotations

from datetime import UTC
from types import SimpleNamespace

import pytest
from aiida.common import AttributeDict
from tace_aiida.workflows.window import alive_children, fill_window, open_window, window_is_open

LABELS = [f"job_{k}" for k in range(5)]


def stand_in():
    """A workchain with a context, and a ``launch`` that records the children it makes."""
    workchain = SimpleNamespace(ctx=AttributeDict(), launched=[])

    def launch(index: int) -> SimpleNamespace:
        workchain.launched.append(index)
        return SimpleNamespace(is_terminated=False)

    open_window(workchain, "jobs")
    return workchain, launch


def finish(workchain, *labels: str) -> None:
    for label in labels:
        workchain.ctx[label].is_terminated = True


def test_the_window_launches_as_children_finish_and_waits_for_the_oldest():
    workchain, launch = stand_in()
    launched, wait = fill_window(workchain, "jobs", LABELS, 2, launch)
    assert launched == range(0, 2) and list(wait) == ["job_0"]
    finish(workchain, "job_1")
    launched, wait = fill_window(workchain, "jobs", LABELS, 2, launch)
    assert launched == range(2, 3) and list(wait) == ["job_0"], "a place freed by a younger child is refilled"
    assert alive_children(workchain, "jobs") == ["job_0", "job_2"]
    finish(workchain, "job_0", "job_2")
    launched, wait = fill_window(workchain, "jobs", LABELS, 2, launch)
    assert launched == range(3, 5) and list(wait) == ["job_3"]
    assert window_is_open(workchain, "jobs", len(LABELS))
    finish(workchain, "job_3", "job_4")
    assert not window_is_open(workchain, "jobs", len(LABELS))
    assert workchain.launched == [0, 1, 2, 3, 4], "every child launched once, in order"


def test_a_full_window_launches_nothing_and_a_closed_one_waits_for_nothing():
    workchain, launch = stand_in()
    fill_window(workchain, "jobs", LABELS[:2], 2, launch)
    launched, wait = fill_window(workchain, "jobs", LABELS[:2], 2, launch)
    assert launched == range(2, 2) and list(wait) == ["job_0"]
    finish(workchain, "job_0", "job_1")
    launched, wait = fill_window(workchain, "jobs", LABELS[:2], 2, launch)
    assert launched == range(2, 2) and wait is None


def test_children_launched_before_a_failing_launch_stay_in_the_window():
    workchain, launch = stand_in()

    def launch_until_the_third(index: int):
        if index == 2:
            raise ValueError("structure 2: bad settings")
        return launch(index)

    with pytest.raises(ValueError, match="structure 2"):
        fill_window(workchain, "jobs", LABELS, 4, launch_until_the_third)
    assert alive_children(workchain, "jobs") == ["job_0", "job_1"]
    assert window_is_open(workchain, "jobs", len(LABELS))


def test_the_step_waits_for_the_job_running_longest_else_the_oldest(aiida_profile):
    from datetime import datetime

    from aiida import orm
    from aiida.common.datastructures import CalcJobState
    from aiida.schedulers.datastructures import JobInfo, JobState
    from tace_aiida.workflows.window import first_to_finish

    def job(state: JobState | None, started: datetime | None = None) -> orm.CalcJobNode:
        node = orm.CalcJobNode()
        node.set_state(CalcJobState.WITHSCHEDULER)
        if state is not None:
            node.set_scheduler_state(state)
            info = JobInfo()
            info.job_state, info.dispatch_time = state, started
            node.set_last_job_info(info)
        return node

    workchain = SimpleNamespace(ctx=AttributeDict({
        "job_0": job(JobState.QUEUED),
        "job_1": job(JobState.RUNNING, datetime(2026, 1, 1, 12, 5, tzinfo=UTC)),
        "job_2": job(JobState.RUNNING, datetime(2026, 1, 1, 12, 1, tzinfo=UTC)),
        "job_3": job(None),
    }))
    assert first_to_finish(workchain, ["job_0", "job_1", "job_2", "job_3"]) == "job_2"
    assert first_to_finish(workchain, ["job_0", "job_3"]) == "job_0", "none running: the oldest"
