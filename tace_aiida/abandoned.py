"""Stopping what a run started once no engine will: the scheduler jobs of its CalcJobs, then the processes themselves.

A run in the foreground (``verdi run``, ``tace-aiida learn`` without ``--submit``) executes the processes it starts in
its own interpreter. Interrupted (Ctrl-C, SIGTERM), aiida-core 2.9 kills the run but not them: they stay ``Waiting``
in the database with no process left to step them on, and their scheduler jobs (trainings and MD on the dask
cluster) run to their end, holding cores or GPUs that later runs queue behind. :func:`end_abandoned_descendants` ends
both. A forced kill (``verdi process kill -F``) of a workchain reaches its CalcJobs' jobs the same way
(:mod:`tace_aiida.workflows.killing`).
"""

from __future__ import annotations

import logging
import signal
from collections.abc import Iterator
from contextlib import contextmanager

from aiida import orm
from aiida.engine.daemon.execmanager import kill_calculation
from plumpy.process_states import ProcessState

from .calculations.base import TaceCalcJob, cancel_dask_job_directly, cancel_file_reaches_job


def stops_its_own_job(node: orm.CalcJobNode) -> bool:
    """Whether a forced kill of the CalcJob ``node`` stops its scheduler job by itself: a tace CalcJob does on a
    ``tace.dask`` computer reached through the local transport (:func:`.cancel_dask_job_directly`)."""
    if not cancel_file_reaches_job(node.computer):
        return False
    try:
        return issubclass(node.process_class, TaceCalcJob)
    except ValueError:  # a class that cannot be loaded here
        return False


def kill_scheduler_job(node: orm.CalcJobNode) -> None:
    """Kill ``node``'s job through the scheduler of its computer (nothing when it has no job yet); a transport or
    scheduler error is logged on the node, so that the rest of a tree is still stopped."""
    if node.get_job_id() is None:
        return
    try:
        with node.get_transport() as transport:
            kill_calculation(node, transport)
    except Exception as error:  # noqa: BLE001  (any transport or scheduler error)
        node.logger.warning(f"the job {node.get_job_id()} of {node.process_label}<{node.pk}> on "
                            f"{node.computer.label} was not stopped: {error}")


def stop_job(node: orm.CalcJobNode) -> None:
    """Stop ``node``'s scheduler job: through its cancel file where that reaches it, else through the scheduler."""
    if not (stops_its_own_job(node) and cancel_dask_job_directly(node)):
        kill_scheduler_job(node)


def end_abandoned_descendants(node: orm.ProcessNode, reason: str) -> list[orm.ProcessNode]:
    """Stop the jobs of the descendants of ``node`` that have not terminated and mark them killed with ``reason`` as
    their status; returns them. Only for processes that no engine runs any more: those of a foreground run that
    ended, whose interpreter executed them."""
    abandoned = [child for child in node.called_descendants if not child.is_terminated]
    for child in abandoned:
        if isinstance(child, orm.CalcJobNode):
            stop_job(child)
    for child in abandoned:
        child.set_process_state(ProcessState.KILLED)
        child.set_process_status(reason)
        child.seal()
    return abandoned


@contextmanager
def interrupts_kill(process) -> Iterator[None]:
    """Within this scope, Ctrl-C (SIGINT) or SIGTERM kills ``process`` from its event loop, between two steps.

    aiida-core's runner kills from inside the signal handler, wherever the interpreter stands: in the middle of a
    database commit, that leaves SQLAlchemy's session "in 'prepared' state" and the run hanging. Here the handler only
    schedules the kill; a second interrupt before it has happened raises ``KeyboardInterrupt`` at once."""
    logger = logging.getLogger(__name__)

    def kill() -> None:
        if not (process.is_killing or process.has_terminated()):
            process.kill(msg_text="Process was killed because the runner received an interrupt")

    def on_interrupt(signum: int, _frame) -> None:
        if process.is_killing or process.has_terminated():
            raise KeyboardInterrupt
        logger.critical(f"received {signal.Signals(signum).name}: killing {type(process).__name__}<{process.pid}> once "
                        "its current step returns (interrupt again to stop at once)")
        process.loop.call_soon_threadsafe(kill)

    originals = {signum: signal.getsignal(signum) for signum in (signal.SIGINT, signal.SIGTERM)}
    for signum in originals:
        signal.signal(signum, on_interrupt)
    try:
        yield
    finally:
        for signum, handler in originals.items():
            signal.signal(signum, handler)


def run_in_foreground(process) -> orm.ProcessNode:
    """Run ``process`` (made by this interpreter's runner) to its end and return its node. Interrupted (Ctrl-C,
    SIGTERM), it is killed (:func:`interrupts_kill`); the processes it started here are then ended too, their jobs
    stopped, and named."""
    from aiida.engine.utils import loop_scope
    from plumpy.exceptions import KilledError

    try:
        with loop_scope(process.loop), interrupts_kill(process):
            process.execute()
    except KilledError:
        node = process.node
        ended = end_abandoned_descendants(node, f"Killed with parent<{node.pk}>, whose run was interrupted")
        if ended:
            print(f"{node.process_label}<{node.pk}> was interrupted: ended the {len(ended)} processes it had started "
                  f"here and stopped their jobs ({', '.join(f'{child.process_label}<{child.pk}>' for child in ended)})")
    return process.node
