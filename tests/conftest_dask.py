"""Fixtures of the ``tace.dask`` tests: a real local dask cluster, a computer using it, and helpers to run CalcJobs.

Loaded with ``pytest_plugins`` by the test module, which also imports its helpers first; it has no assertion to
rewrite: PYTEST_DONT_REWRITE.
"""

from __future__ import annotations

import asyncio
import os
import time
import typing as t
from pathlib import Path

import psutil
import pytest
from aiida import orm
from aiida.common.datastructures import CalcInfo, CodeInfo
from aiida.engine import CalcJob
from aiida.manage import get_manager
from distributed import Client
from plumpy import ensure_portal

from tace_aiida.dask_cluster import SCHEDULER_ENV, LocalCluster, ensure_local_cluster, stop_local_cluster
from tace_aiida.schedulers.job_state import STATE_FILENAME, DaskJobState, JobStatus, read_job_state

WORKERS = 2
TIMEOUT = 60.0


class ShellJob(CalcJob):
    """Run the bash ``script`` with the code (``/bin/bash``). It has no parser: the scheduler's exit code decides."""

    @classmethod
    def define(cls, spec):
        super().define(spec)
        spec.input("script", valid_type=orm.Str, help="Bash script to run in the working directory.")
        spec.inputs["metadata"]["options"]["resources"].default = {"num_machines": 1, "num_mpiprocs_per_machine": 1}

    def prepare_for_submission(self, folder):
        with folder.open("job.sh", "w") as handle:
            handle.write(self.inputs.script.value)
        codeinfo = CodeInfo()
        codeinfo.code_uuid = self.inputs.code.uuid
        codeinfo.cmdline_params = ["job.sh"]
        calcinfo = CalcInfo()
        calcinfo.codes_info = [codeinfo]
        calcinfo.retrieve_list = [STATE_FILENAME]
        return calcinfo


@pytest.fixture(scope="module")
def cluster(tmp_path_factory) -> t.Iterator[LocalCluster]:
    """A detached local cluster of two workers that declare ``GPU=1`` but see no GPU, found through
    ``TACE_DASK_SCHEDULER``."""
    directory = tmp_path_factory.mktemp("dask-cluster")
    with pytest.MonkeyPatch.context() as monkeypatch:
        monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
        started = ensure_local_cluster(n_workers=WORKERS, gpus_per_worker=1, directory=directory)
        monkeypatch.setenv(SCHEDULER_ENV, str(started.scheduler_file))
        try:
            yield started
        finally:
            stop_local_cluster(directory)


@pytest.fixture(scope="module")
def cluster_client(cluster) -> t.Iterator[Client]:
    """A client of the test cluster, to inspect and hurt its workers."""
    with Client(cluster.address, timeout=5, security=cluster.security, set_as_default=False) as client:
        yield client


@pytest.fixture
def dask_computer(aiida_computer, cluster) -> orm.Computer:
    """A computer whose scheduler is ``tace.dask``, polled every 0.5 s, with a local transport."""
    computer = aiida_computer(scheduler_type="tace.dask", configuration_kwargs={"safe_interval": 0})
    computer.set_minimum_job_poll_interval(0.5)
    return computer


@pytest.fixture
def bash_code(aiida_code_installed, dask_computer) -> orm.InstalledCode:
    """``/bin/bash`` installed on the dask computer."""
    return aiida_code_installed(computer=dask_computer, filepath_executable="/bin/bash")


def shell_job(code: orm.InstalledCode, script: str, **options: t.Any) -> dict[str, t.Any]:
    """Inputs of a :class:`ShellJob` running ``script``."""
    return {"code": code, "script": orm.Str(script), "metadata": {"options": options}}


def run_concurrently(
    processes: list[tuple[type[CalcJob], dict[str, t.Any]]],
    also: t.Callable[[list[t.Any]], t.Awaitable[None]] | None = None,
    timeout: float = TIMEOUT,
) -> list[orm.CalcJobNode]:
    """Run the processes at the same time in this interpreter's runner, with ``also(processes)`` beside them.

    :raises TimeoutError: if they are not all done within ``timeout`` seconds.
    """
    runner = get_manager().get_runner()
    instances = [runner.instantiate_process(process, **inputs) for process, inputs in processes]

    async def beside() -> None:
        await ensure_portal()  # Process.kill runs the kill task synchronously, through a greenback portal
        await also(instances)

    async def everything() -> None:
        tasks = [instance.step_until_terminated() for instance in instances]
        if also is not None:
            tasks.append(beside())
        await asyncio.gather(*tasks)

    runner.loop.run_until_complete(asyncio.wait_for(everything(), timeout))
    return [instance.node for instance in instances]


async def running_state(process: t.Any, timeout: float = TIMEOUT) -> tuple[Path, DaskJobState]:
    """Wait until the process's job runs and its script wrote ``child.pid``; return the working directory and state."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        workdir = process.node.get_remote_workdir()
        if workdir is not None and (Path(workdir) / "child.pid").is_file():
            state = read_job_state(workdir)
            if state.status is JobStatus.RUNNING:
                return Path(workdir), state
        await asyncio.sleep(0.05)
    raise TimeoutError(f"the job of {process.node} did not start within {timeout} s")


def wait_until(condition: t.Callable[[], bool], timeout: float, message: str) -> None:
    """Poll ``condition`` every 0.05 s; fail the test with ``message`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(message)
        time.sleep(0.05)


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` exists and is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def child_pid(workdir: str | os.PathLike[str]) -> int:
    """The pid that a test script wrote in ``child.pid``."""
    return int((Path(workdir) / "child.pid").read_text())


def listening_hosts(cluster: LocalCluster) -> dict[str, set[str]]:
    """The IP addresses on which each process of ``cluster`` (with its children, e.g. a nanny's worker) listens."""
    hosts = {}
    for record in cluster.processes:
        process = psutil.Process(record.pid)
        family = [process, *process.children(recursive=True)]
        sockets = [socket for member in family for socket in member.net_connections(kind="inet")]
        hosts[record.name] = {socket.laddr.ip for socket in sockets if socket.status == psutil.CONN_LISTEN}
    return hosts
