"""``verdi process kill -F`` of a tace-aiida CalcJob still stops its ``tace.dask`` job (aiida-core skips the scheduler)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from aiida.manage import get_manager
from aiida.schedulers.datastructures import JobState
from plumpy import ensure_portal

from tace_aiida.calculations.base import TaceCalcJob
from tace_aiida.schedulers.job_state import CANCEL_FILENAME, Ending, JobStatus, read_job_state
from tests.conftest_dask import ShellJob, child_pid, pid_alive, running_state, shell_job, wait_until

pytest_plugins = ["aiida.tools.pytest_fixtures", "tests.conftest_dask"]
pytestmark = pytest.mark.slow

ORPHAN_SCRIPT = "sleep 60 & echo $! > child.pid; wait\n"


class TaceShellJob(ShellJob, TaceCalcJob):
    """:class:`ShellJob` as a tace-aiida CalcJob."""


@pytest.mark.parametrize("job_class, stopped", [(TaceShellJob, True), (ShellJob, False)])
def test_a_forced_kill_stops_the_dask_job_of_a_tace_calcjob(bash_code, dask_computer, job_class, stopped):
    dask_computer.set_minimum_job_poll_interval(5.0)
    seen = {}

    async def force_kill(processes):
        seen["workdir"], _ = await running_state(processes[0])
        while processes[0].node.get_scheduler_state() is not JobState.RUNNING:
            await asyncio.sleep(0.05)
        assert processes[0].kill("killed by the test", force_kill=True) is True

    runner = get_manager().get_runner()
    process = runner.instantiate_process(job_class, **shell_job(bash_code, ORPHAN_SCRIPT))

    async def run_and_force_kill() -> None:
        stepping = asyncio.ensure_future(process.step_until_terminated())
        await ensure_portal()
        await force_kill([process])
        # aiida-core 2.9 then fails to step the force-killed process on (it deletes the state of the sealed node),
        # which a daemon worker logs; the node is killed all the same.
        await asyncio.wait([stepping], timeout=30)

    runner.loop.run_until_complete(run_and_force_kill())
    node = process.node

    assert node.is_killed
    workdir = seen["workdir"]
    if not stopped:
        assert pid_alive(child_pid(workdir)), "aiida-core alone leaves the job running: the test shows the difference"
        (Path(workdir) / CANCEL_FILENAME).touch()
        wait_until(lambda: not pid_alive(child_pid(workdir)), 10, "the orphan of the plain CalcJob was not cleaned up")
        return
    wait_until(lambda: not pid_alive(child_pid(workdir)), 10, "the job's child outlived the forced kill")
    wait_until(lambda: read_job_state(workdir).status is JobStatus.DONE, 10, "the killed job was not marked done")
    assert read_job_state(workdir).ending is Ending.CANCELLED
