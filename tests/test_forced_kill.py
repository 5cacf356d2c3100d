"""``verdi process kill -F`` of a tace-aiida CalcJob still stops its ``tace.dask`` job, and of a tace-aiida workchain the
scheduler job of any CalcJob it started (aiida-core skips the scheduler)."""

from __future__ import annotations

import asyncio
import typing as t
from pathlib import Path

import pytest
from aiida import orm
from aiida.engine import ToContext, WorkChain
from aiida.engine.daemon.execmanager import kill_calculation
from aiida.manage import get_manager
from aiida.schedulers.datastructures import JobState
from plumpy import ensure_portal
from tace_aiida.workflows.killing import ForcedKillReachesChildren

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


class SubmitsOneShellJob(WorkChain):
    """Submits one :class:`ShellJob` (a CalcJob of another plugin, as ``PwCalculation`` is) and waits for it."""

    @classmethod
    def define(cls, spec):
        super().define(spec)
        spec.input("code", valid_type=orm.InstalledCode)
        spec.outline(cls.submit_job, cls.finish)

    def submit_job(self):
        return ToContext(job=self.submit(ShellJob, **shell_job(self.inputs.code, "sleep 60\n")))

    def finish(self):
        pass


class TaceSubmitsOneShellJob(ForcedKillReachesChildren, SubmitsOneShellJob):
    """:class:`SubmitsOneShellJob` as a tace-aiida workchain."""


async def until(condition: t.Callable[[], bool], timeout: float) -> bool:
    """Poll ``condition`` every 0.05 s in the running event loop; whether it held within ``timeout`` seconds."""
    deadline = asyncio.get_running_loop().time() + timeout
    while not condition():
        if asyncio.get_running_loop().time() > deadline:
            return False
        await asyncio.sleep(0.05)
    return True


@pytest.mark.parametrize("workchain_class, stopped", [(TaceSubmitsOneShellJob, True), (SubmitsOneShellJob, False)])
def test_a_forced_kill_of_a_workchain_kills_the_scheduler_job_of_its_calcjob(fast_polling, aiida_localhost,
                                                                            aiida_code_installed, workchain_class,
                                                                            stopped):
    """A forced kill of the workchain kills its CalcJob's job through the scheduler, as a kill without ``-F`` would:
    on ``core.direct`` the submit script's shell (the job id) and every process below it, on Slurm ``scancel``."""
    code = aiida_code_installed(computer=aiida_localhost, filepath_executable="/bin/bash")
    runner = get_manager().get_runner()
    process = runner.instantiate_process(workchain_class, code=code)
    seen = {}

    def job_running() -> bool:
        return bool(process.node.called) and process.node.called[0].get_scheduler_state() is JobState.RUNNING

    async def run_and_force_kill() -> None:
        stepping = asyncio.ensure_future(process.step_until_terminated())
        await ensure_portal()
        assert await until(job_running, 60), "the shell job did not start within 60 s"
        job = seen["job"] = process.node.called[0]
        job_pid = int(job.get_job_id())
        assert pid_alive(job_pid)
        assert process.kill("killed by the test", force_kill=True) is True
        assert await until(process.has_terminated, 30), "the workchain was not killed"
        stepping.cancel()  # it waits on for the child, which aiida-core does not kill after a forced kill
        seen["job_ended"] = await until(lambda: not pid_alive(job_pid), 5)
        if not seen["job_ended"]:  # clean up, and let the child end in this loop, not in a later test's
            with job.get_transport() as transport:
                kill_calculation(job, transport)
        assert await until(lambda: job.is_terminated, 60), "the child did not end after its job was gone"

    runner.loop.run_until_complete(run_and_force_kill())
    assert process.node.is_killed
    if stopped:
        assert seen["job_ended"], "the scheduler job outlived the forced kill of its workchain"
    else:
        assert not seen["job_ended"], "aiida-core alone leaves the job running: the test shows the difference"
