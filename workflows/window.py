"""At most N children alive at once, topped up as they finish (a rolling window).

A workchain step waits for every child it hands to the context. Launching N children and waiting for
all of them (batches) idles the workers while the slowest child of each batch runs, and again while
AiiDA notices that it has finished and launches the next batch. Here each step tops the window up
to N alive children and waits for one only, the one expected to finish first (the job its scheduler
has been running longest, else the oldest child); the others run on, so the workers find queued
work as long as anything is left to launch. Children that finish while that one still runs free
their places at the next step.

The window lives in the context as plain values (the labels of the alive children and the number
launched), so a checkpoint holds it; a daemon restarted in the middle of a step repeats it, and
:func:`.resubmission.submit_once` finds the children the interrupted step had made.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import datetime

from aiida import orm
from aiida.common.datastructures import CalcJobState
from aiida.engine import ToContext, WorkChain
from aiida.schedulers.datastructures import JobState


def open_window(workchain: WorkChain, name: str) -> None:
    """Start the window ``name``: nothing launched, nothing alive."""
    workchain.ctx[f"{name}_alive"] = []
    workchain.ctx[f"{name}_launched"] = 0


def launched_count(workchain: WorkChain, name: str) -> int:
    """How many children the window ``name`` has launched."""
    return workchain.ctx[f"{name}_launched"]


def alive_children(workchain: WorkChain, name: str) -> list[str]:
    """Labels (context keys) of the window's children that have not terminated, oldest first."""
    return [label for label in workchain.ctx[f"{name}_alive"] if not workchain.ctx[label].is_terminated]


def running_since(node: orm.ProcessNode) -> float | None:
    """When (POSIX seconds) the scheduler started running ``node``'s job (a CalcJob it reports running), else None."""
    if not isinstance(node, orm.CalcJobNode) or node.get_state() is not CalcJobState.WITHSCHEDULER:
        return None
    if node.get_scheduler_state() is not JobState.RUNNING:
        return None
    info = node.get_last_job_info()
    started = getattr(info, "dispatch_time", None) if info is not None else None
    return (started if isinstance(started, datetime) else node.ctime).timestamp()


def first_to_finish(workchain: WorkChain, labels: Sequence[str]) -> str:
    """Of the alive children ``labels`` (oldest first), the one expected to finish first: the job running
    longest, or the oldest when the scheduler runs none of them yet (or they are no CalcJobs)."""
    started = {label: running_since(workchain.ctx[label]) for label in labels}
    running = sorted((time, index) for index, time in enumerate(started.values()) if time is not None)
    return labels[running[0][1]] if running else labels[0]


def window_is_open(workchain: WorkChain, name: str, total: int) -> bool:
    """Whether the window ``name`` over ``total`` children still has some to launch or alive."""
    return launched_count(workchain, name) < total or bool(alive_children(workchain, name))


def fill_window(
    workchain: WorkChain,
    name: str,
    labels: Sequence[str],
    limit: int,
    launch: Callable[[int], orm.ProcessNode],
) -> tuple[range, ToContext | None]:
    """Launch the next children (``launch(index)``, kept in the context under ``labels[index]``) until
    ``limit`` are alive; return the indices launched now and what to wait for: :func:`first_to_finish`.

    An exception raised by ``launch`` leaves the children launched before it in the window.
    """
    ctx = workchain.ctx
    alive = alive_children(workchain, name)
    first = launched_count(workchain, name)
    try:
        while len(alive) < limit and ctx[f"{name}_launched"] < len(labels):
            index = ctx[f"{name}_launched"]
            ctx[labels[index]] = launch(index)
            alive.append(labels[index])
            ctx[f"{name}_launched"] = index + 1
    finally:
        ctx[f"{name}_alive"] = alive
    launched = range(first, ctx[f"{name}_launched"])
    if not alive:
        return launched, None
    label = first_to_finish(workchain, alive)
    return launched, ToContext(**{label: ctx[label]})
