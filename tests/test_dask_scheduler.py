"""The ``tace.dask`` scheduler plugin, its job state file, its watchdog, the local cluster and ``tace-aiida dask``.

The slow tests run real CalcJobs on a real local dask cluster of two workers that declare ``GPU=1``.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import os
import re
import signal
import subprocess
import sys
import time

import pytest
from aiida import orm
from aiida.common.datastructures import CodeRunMode
from aiida.engine import CalcJob
from aiida.engine.processes.calcjobs.tasks import MAX_ATTEMPTS_OPTION, RETRY_INTERVAL_OPTION
from aiida.manage.configuration import get_config
from aiida.schedulers import SchedulerError
from aiida.schedulers.datastructures import JobState, JobTemplate, JobTemplateCodeInfo
from aiida.transports.plugins.local import LocalTransport
from click.testing import CliRunner

from tace_aiida import dask_cluster
from tace_aiida.cli_dask import dask
from tace_aiida.dask_cluster import SCHEDULER_ENV, DaskClusterError, ensure_local_cluster, scheduler_address
from tace_aiida.schedulers.dask import CLIENT_TIMEOUT, DaskJobResource, DaskScheduler, JobDirectives, parse_directives
from tace_aiida.schedulers.job_state import (
    CANCEL_FILENAME,
    STATE_FILENAME,
    DaskJobState,
    Ending,
    JobStatus,
    busy_seconds,
    read_job_state,
    write_job_state,
)
from tests.conftest_dask import (
    WORKERS,
    ShellJob,
    child_pid,
    listening_hosts,
    pid_alive,
    run_concurrently,
    running_state,
    shell_job,
    wait_until,
)

pytest_plugins = ["aiida.tools.pytest_fixtures", "tests.conftest_dask"]

ORPHAN_SCRIPT = "sleep 30 & echo $! > child.pid; wait\n"
UNREACHABLE = "tcp://127.0.0.1:1"
FAKE_WORKER = """
import os, subprocess, sys, time
directory = sys.argv[1]
with open(f"{directory}/watchdog.out", "w") as output:
    command = [sys.executable, "-m", "tace_aiida.schedulers.watchdog", directory, "job.sh"]
    subprocess.Popen([*command, "--parent", str(os.getpid())], stdout=output, start_new_session=True)
time.sleep(60)
"""
REATTACH = """
import json, sys, time
from aiida.transports.plugins.local import LocalTransport
from tace_aiida.schedulers.dask import DaskScheduler

scheduler = DaskScheduler()
with LocalTransport() as transport:
    scheduler.set_transport(transport)
    deadline = time.monotonic() + 30
    info = scheduler.get_jobs(jobs=[sys.argv[1]], as_dict=True)[sys.argv[1]]
    while info.job_state.value != "done" and time.monotonic() < deadline:
        time.sleep(0.1)
        info = scheduler.get_jobs(jobs=[sys.argv[1]], as_dict=True)[sys.argv[1]]
print(json.dumps(info.get_dict()))
"""


def a_state(**changes) -> DaskJobState:
    """A finished job state with every field set."""
    state = DaskJobState(
        job_id="/scratch/ab/cd/ef",
        status=JobStatus.DONE,
        gpus=1,
        attempts=1,
        exit_code=0,
        submitted_at=1.0,
        started_at=2.0,
        finished_at=3.0,
        worker="tcp://127.0.0.1:1234",
        ending=Ending.EXITED,
    )
    return state.replace(**changes)


def template(**fields) -> JobTemplate:
    """A job template running ``/bin/true`` with ``fields`` set."""
    job_tmpl = JobTemplate()
    job_tmpl.job_resource = DaskScheduler.create_job_resource(num_machines=1, num_mpiprocs_per_machine=1)
    job_tmpl.codes_info = [JobTemplateCodeInfo(prepend_cmdline_params=["/bin/true"])]
    job_tmpl.codes_run_mode = CodeRunMode.SERIAL
    job_tmpl.sched_output_path = "_scheduler-stdout.txt"
    job_tmpl.sched_error_path = "_scheduler-stderr.txt"
    for key, value in fields.items():
        setattr(job_tmpl, key, value)
    return job_tmpl


@pytest.fixture
def dask_scheduler(cluster):
    """A ``DaskScheduler`` with an open local transport, on the test cluster."""
    scheduler = DaskScheduler()
    with LocalTransport() as transport:
        scheduler.set_transport(transport)
        yield scheduler


def wait_done(scheduler: DaskScheduler, job_id: str, timeout: float = 30.0) -> None:
    """Poll ``get_jobs`` until the job is done."""
    wait_until(
        lambda: scheduler.get_jobs(jobs=[job_id], as_dict=True)[job_id].job_state.value == "done",
        timeout,
        f"job {job_id} not done after {timeout} s",
    )


def started(state: DaskJobState) -> float:
    """Sort key: when the job started."""
    return state.started_at


# Fast tests: no cluster.


def test_busy_seconds_is_the_union_of_the_jobs_running_times():
    def ran(start, end):
        return DaskJobState("j", JobStatus.DONE, gpus=0, started_at=start, finished_at=end)

    states = [ran(0.0, 10.0), ran(5.0, 12.0), ran(20.0, 21.0), ran(None, 30.0), DaskJobState("q", JobStatus.QUEUED, 0)]
    assert busy_seconds(states) == 13.0, "overlaps counted once, jobs that never ran left out"
    assert busy_seconds([]) == 0.0


def test_job_state_round_trip(tmp_path):
    state = a_state(ending=Ending.LOST, reason="worker died")
    assert DaskJobState.from_json(state.to_json()) == state
    write_job_state(tmp_path, state)
    assert read_job_state(tmp_path) == state
    assert read_job_state(str(tmp_path)).lost
    folder = orm.FolderData()
    folder.base.repository.put_object_from_bytes(state.to_json().encode(), STATE_FILENAME)
    assert read_job_state(folder) == state


def test_read_job_state_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match=STATE_FILENAME):
        read_job_state(tmp_path)
    with pytest.raises(FileNotFoundError, match="retrieve_list"):
        read_job_state(orm.FolderData())
    (tmp_path / STATE_FILENAME).write_text('{"job_id": "x", "status": "sleeping", "gpus": 1}')
    with pytest.raises(ValueError, match="sleeping"):
        read_job_state(tmp_path)


def test_job_resource():
    assert DaskJobResource(num_machines=1, num_mpiprocs_per_machine=1).num_gpus == 1
    assert DaskJobResource(num_machines=1, num_mpiprocs_per_machine=2, num_gpus=0).num_gpus == 0
    with pytest.raises(ValueError, match="-1"):
        DaskJobResource(num_machines=1, num_mpiprocs_per_machine=1, num_gpus=-1)
    with pytest.raises(ValueError, match=r"num_machines.*got 2"):
        DaskJobResource(num_machines=2, num_mpiprocs_per_machine=1)


def test_submit_script_directives():
    scheduler = DaskScheduler()
    assert parse_directives(scheduler.get_submit_script(template())) == JobDirectives()

    job_tmpl = template(max_wallclock_seconds=60, rerunnable=True, import_sys_environment=False)
    job_tmpl.job_resource = DaskScheduler.create_job_resource(num_machines=1, num_mpiprocs_per_machine=1, num_gpus=2)
    script = scheduler.get_submit_script(job_tmpl)
    assert script.startswith("#!/bin/bash\n#DASK gpus=2\n")
    assert "exec > '_scheduler-stdout.txt'\nexec 2> '_scheduler-stderr.txt'\n" in script
    assert parse_directives(script) == JobDirectives(gpus=2, walltime=60, rerunnable=True, import_sys_environment=False)

    job_tmpl.custom_scheduler_commands = "#DASK gpus=0"
    assert parse_directives(scheduler.get_submit_script(job_tmpl)).gpus == 0


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("#DASK queue=gpu", "unknown dask directive 'queue=gpu'"),
        ("#DASK gpus=-1", "gpus='-1' must be at least 0"),
        ("#DASK gpus=1.5", "gpus='1.5' is not a valid int"),
        ("#DASK rerunnable=yes", "rerunnable='yes' must be true or false"),
    ],
)
def test_invalid_directives(line, message):
    with pytest.raises(SchedulerError, match=re.escape(message)):
        parse_directives(f"#!/bin/bash\n{line}\n")


def test_scheduler_address(monkeypatch, tmp_path):
    monkeypatch.setattr(dask_cluster, "default_directory", lambda: tmp_path)
    monkeypatch.delenv(SCHEDULER_ENV, raising=False)
    with pytest.raises(DaskClusterError, match=SCHEDULER_ENV):
        scheduler_address()
    (tmp_path / "scheduler.json").write_text(json.dumps({"address": "tcp://127.0.0.1:1"}))
    assert scheduler_address() == "tcp://127.0.0.1:1"
    other = tmp_path / "other.json"
    other.write_text(json.dumps({"address": "tcp://127.0.0.1:2"}))
    monkeypatch.setenv(SCHEDULER_ENV, str(other))
    assert scheduler_address() == "tcp://127.0.0.1:2"
    monkeypatch.setenv(SCHEDULER_ENV, "tcp://dask-scheduler.example:8786")
    assert scheduler_address() == "tcp://dask-scheduler.example:8786"
    monkeypatch.setenv(SCHEDULER_ENV, str(tmp_path / "missing.json"))
    with pytest.raises(DaskClusterError, match=r"missing\.json"):
        scheduler_address()


def test_unreachable_scheduler_is_named_within_seconds(monkeypatch, tmp_path):
    scheduler_file = tmp_path / "scheduler.json"
    scheduler_file.write_text(json.dumps({"address": UNREACHABLE}))
    monkeypatch.setenv(SCHEDULER_ENV, str(scheduler_file))
    started = time.monotonic()
    with pytest.raises(SchedulerError, match=f"cannot connect to the dask scheduler at {re.escape(UNREACHABLE)}"):
        DaskScheduler().get_jobs()
    assert time.monotonic() - started < 2 * CLIENT_TIMEOUT


def test_parse_output():
    scheduler = DaskScheduler()

    def exit_code(state: DaskJobState):
        return scheduler.parse_output({"retval": 0, "stdout": state.to_json(), "stderr": ""}, "", "")

    assert exit_code(a_state(ending=Ending.LOST)) == CalcJob.exit_codes.ERROR_SCHEDULER_NODE_FAILURE
    assert exit_code(a_state(ending=Ending.WALLTIME)) == CalcJob.exit_codes.ERROR_SCHEDULER_OUT_OF_WALLTIME
    assert exit_code(a_state(exit_code=3)) is None
    assert scheduler.parse_output(None, "", "") is None


def test_watchdog_cancel_kills_process_group(tmp_path):
    (tmp_path / "job.sh").write_text(ORPHAN_SCRIPT)
    command = [sys.executable, "-m", "tace_aiida.schedulers.watchdog", str(tmp_path), "job.sh"]
    watchdog = subprocess.Popen([*command, "--parent", str(os.getpid())], stdout=subprocess.PIPE, text=True)
    wait_until(lambda: (tmp_path / "child.pid").is_file(), 10, "the script did not start")
    (tmp_path / CANCEL_FILENAME).touch()
    stdout, _ = watchdog.communicate(timeout=10)
    assert json.loads(stdout) == {"ending": "cancelled", "exit_code": -signal.SIGTERM}
    wait_until(lambda: not pid_alive(child_pid(tmp_path)), 5, "the script's child outlived the cancel")


def test_watchdog_kills_process_group_when_worker_dies(tmp_path):
    (tmp_path / "job.sh").write_text(ORPHAN_SCRIPT)
    worker = subprocess.Popen([sys.executable, "-c", FAKE_WORKER, str(tmp_path)])
    try:
        wait_until(lambda: (tmp_path / "child.pid").is_file(), 10, "the script did not start")
        worker.kill()
        worker.wait(timeout=10)
        wait_until(lambda: not pid_alive(child_pid(tmp_path)), 5, "the script's child outlived its worker")
        wait_until(lambda: (tmp_path / "watchdog.out").read_text() != "", 5, "the watchdog did not report")
        assert json.loads((tmp_path / "watchdog.out").read_text())["ending"] == "lost"
    finally:
        worker.kill()


def test_cli_status_without_cluster(tmp_path):
    result = CliRunner().invoke(dask, ["status", "--directory", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert "no local dask cluster recorded" in result.output


# Slow tests: a real local dask cluster.


@pytest.mark.slow
def test_local_cluster_is_idempotent_and_reports_status(cluster):
    again = ensure_local_cluster(n_workers=WORKERS, gpus_per_worker=1, directory=cluster.directory)
    assert again == cluster
    result = CliRunner().invoke(dask, ["status", "--directory", str(cluster.directory)])
    assert result.exit_code == 0, result.output
    assert len(re.findall(r"pid \d+ running", result.output)) == 1 + WORKERS
    assert result.output.count("GPU=1") == WORKERS


@pytest.mark.slow
def test_too_many_gpus_fail_at_submission(dask_scheduler, tmp_path):
    (tmp_path / "job.sh").write_text("#!/bin/bash\n#DASK gpus=2\necho never\n")
    with pytest.raises(SchedulerError, match=r"asks for 2 GPU\(s\), but the largest of the 2 worker\(s\).*has GPU=1"):
        dask_scheduler.submit_job(str(tmp_path), "job.sh")
    assert not (tmp_path / STATE_FILENAME).exists()


@pytest.mark.slow
def test_state_file_round_trip_and_reattachment(dask_scheduler, tmp_path):
    (tmp_path / "job.sh").write_text("#!/bin/bash\n#DASK gpus=1\nsleep 1\necho done >> out.txt\n")
    job_id = dask_scheduler.submit_job(str(tmp_path), "job.sh")
    assert job_id == str(tmp_path)
    submitted = read_job_state(tmp_path)
    assert dask_scheduler.submit_job(str(tmp_path), "job.sh") == job_id
    assert read_job_state(tmp_path).submitted_at == submitted.submitted_at

    reattached = subprocess.run(
        [sys.executable, "-c", REATTACH, job_id], capture_output=True, text=True, timeout=60, check=True
    )
    info = json.loads(reattached.stdout)
    assert info["job_state"] == "done" and info["exit_status"] == 0

    state = read_job_state(tmp_path)
    assert (state.status, state.ending, state.exit_code, state.attempts, state.gpus) == (
        JobStatus.DONE,
        Ending.EXITED,
        0,
        1,
        1,
    )
    assert state.worker.startswith("tcp://127.0.0.1:")
    assert state.submitted_at <= state.started_at < state.finished_at
    assert (tmp_path / "out.txt").read_text() == "done\n"


@pytest.mark.slow
def test_job_unknown_to_dask_is_reported_lost(dask_scheduler, tmp_path):
    write_job_state(tmp_path, DaskJobState(str(tmp_path), JobStatus.RUNNING, gpus=1, attempts=1))
    info = dask_scheduler.get_jobs(jobs=[str(tmp_path)], as_dict=True)[str(tmp_path)]
    assert info.job_state.value == "done"
    state = read_job_state(tmp_path)
    assert state.lost and "does not know its task" in state.reason
    assert (tmp_path / CANCEL_FILENAME).exists()


@pytest.mark.slow
def test_job_finishing_while_polled_is_not_lost(dask_scheduler, tmp_path, monkeypatch):
    """The state file still said running, but the runner wrote its end before dask forgot the finished task."""
    running = DaskJobState(str(tmp_path), JobStatus.RUNNING, gpus=0, attempts=1)
    write_job_state(tmp_path, running)
    ask_dask = dask_scheduler._task_states

    def runner_finishes_meanwhile(client, address, job_ids):
        write_job_state(tmp_path, running.replace(status=JobStatus.DONE, exit_code=0, ending=Ending.EXITED))
        return ask_dask(client, address, job_ids)

    monkeypatch.setattr(dask_scheduler, "_task_states", runner_finishes_meanwhile)
    info = dask_scheduler.get_jobs(jobs=[str(tmp_path)], as_dict=True)[str(tmp_path)]
    assert info.job_state.value == "done"
    state = read_job_state(tmp_path)
    assert (state.ending, state.exit_code) == (Ending.EXITED, 0)
    assert not (tmp_path / CANCEL_FILENAME).exists()


@pytest.mark.slow
def test_walltime_kills_job(dask_scheduler, tmp_path):
    (tmp_path / "job.sh").write_text(f"#!/bin/bash\n#DASK gpus=0 walltime=1\n{ORPHAN_SCRIPT}")
    job_id = dask_scheduler.submit_job(str(tmp_path), "job.sh")
    wait_done(dask_scheduler, job_id)
    state = read_job_state(tmp_path)
    assert (state.ending, state.gpus, state.exit_code) == (Ending.WALLTIME, 0, -signal.SIGTERM)
    assert not pid_alive(child_pid(tmp_path))
    detailed = dask_scheduler.get_detailed_job_info(job_id)
    assert dask_scheduler.parse_output(detailed, "", "") == CalcJob.exit_codes.ERROR_SCHEDULER_OUT_OF_WALLTIME


@pytest.mark.slow
def test_calcjobs_run_concurrently_on_different_workers(aiida_code_installed, dask_computer):
    code = aiida_code_installed(
        computer=dask_computer, filepath_executable="/bin/bash", default_calc_job_plugin="core.arithmetic.add"
    )
    jobs = []
    for x in range(3):
        builder = code.get_builder()
        builder.x, builder.y = orm.Int(x), orm.Int(10)
        builder.metadata.options.sleep = 2
        builder.metadata.options.resources = {"num_machines": 1, "num_mpiprocs_per_machine": 1, "num_gpus": 1}
        jobs.append((builder, {}))

    nodes = run_concurrently(jobs)

    assert [node.exit_status for node in nodes] == [0, 0, 0]
    assert [node.outputs.sum.value for node in nodes] == [10, 11, 12]
    states = sorted((read_job_state(node.outputs.remote_folder.get_remote_path()) for node in nodes), key=started)
    assert all(state.ending is Ending.EXITED and state.attempts == 1 for state in states)
    assert len({state.worker for state in states}) == WORKERS
    first, second, third = states
    assert first.worker != second.worker
    assert second.started_at < first.finished_at, "the first two jobs did not overlap in time"
    assert third.started_at >= min(first.finished_at, second.finished_at), "a worker ran two jobs at once"


@pytest.mark.slow
def test_killing_calcjob_kills_process_group(bash_code, dask_computer):
    # aiida-core 2.9 race: ``Process.kill`` raises InvalidStateError when a job update ends while the scheduler job is
    # being killed (``Waiting.interrupt`` then interrupts a finished task). So kill once AiiDA has seen the job
    # running, with the next poll seconds away, as a person would with ``verdi process kill``.
    dask_computer.set_minimum_job_poll_interval(5.0)
    seen = {}

    async def kill(processes):
        seen["workdir"], _ = await running_state(processes[0])
        while processes[0].node.get_scheduler_state() is not JobState.RUNNING:
            await asyncio.sleep(0.05)
        killing = processes[0].kill("killed by the test")
        if inspect.isawaitable(killing):
            await killing

    [node] = run_concurrently([(ShellJob, shell_job(bash_code, ORPHAN_SCRIPT))], also=kill)

    assert node.is_killed
    workdir = seen["workdir"]
    wait_until(lambda: not pid_alive(child_pid(workdir)), 5, "the job's child outlived the kill")
    wait_until(lambda: read_job_state(workdir).status is JobStatus.DONE, 5, "the killed job was not marked done")
    assert read_job_state(workdir).ending is Ending.CANCELLED


@pytest.mark.slow
def test_worker_death_fails_calcjob(bash_code, cluster_client):
    seen = {}

    async def kill_worker(processes):
        seen["workdir"], state = await running_state(processes[0])
        pids = cluster_client.run(os.getpid, workers=[state.worker])
        os.kill(pids[state.worker], signal.SIGKILL)

    try:
        [node] = run_concurrently([(ShellJob, shell_job(bash_code, ORPHAN_SCRIPT))], also=kill_worker)
    finally:
        cluster_client.wait_for_workers(WORKERS, timeout=30)

    assert node.exit_status == CalcJob.exit_codes.ERROR_SCHEDULER_NODE_FAILURE.status
    state = read_job_state(node.outputs.retrieved)
    assert state.lost and state.attempts == 1 and "not rerunnable" in state.reason
    wait_until(lambda: not pid_alive(child_pid(seen["workdir"])), 5, "the job's child outlived its worker")


@pytest.mark.slow
def test_local_cluster_listens_on_loopback_only(cluster, cluster_client):
    assert cluster.address.startswith("tcp://127.0.0.1:")
    workers = cluster_client.scheduler_info(n_workers=-1)["workers"]
    assert len(workers) == WORKERS and all(address.startswith("tcp://127.0.0.1:") for address in workers)
    hosts = listening_hosts(cluster)
    assert len(hosts) == 1 + WORKERS and all(found == {"127.0.0.1"} for found in hosts.values()), hosts


@pytest.mark.slow
def test_unreachable_scheduler_pauses_calcjob_until_reachable(bash_code, cluster, monkeypatch):
    """Submitting to a dead address fails, naming it, on each of AiiDA's attempts; the CalcJob then pauses, and once
    played with the cluster reachable it runs."""
    config, profile = get_config(), get_config().default_profile_name
    config.set_option(RETRY_INTERVAL_OPTION, 1, scope=profile)
    config.set_option(MAX_ATTEMPTS_OPTION, 2, scope=profile)
    monkeypatch.setenv(SCHEDULER_ENV, UNREACHABLE)
    seen = {}

    async def play_once_paused(processes):
        started = time.monotonic()
        while not processes[0].paused:
            await asyncio.sleep(0.1)
        seen["paused after"] = time.monotonic() - started
        seen["logs"] = [f"{log.message} {log.metadata}" for log in orm.Log.collection.get_logs_for(processes[0].node)]
        seen["status"] = processes[0].node.process_status
        monkeypatch.setenv(SCHEDULER_ENV, str(cluster.scheduler_file))
        processes[0].play()

    try:
        [node] = run_concurrently([(ShellJob, shell_job(bash_code, "echo ran > out.txt\n"))], also=play_once_paused)
    finally:
        config.unset_option(RETRY_INTERVAL_OPTION, scope=profile)
        config.unset_option(MAX_ATTEMPTS_OPTION, scope=profile)

    failures = [log for log in seen["logs"] if f"cannot connect to the dask scheduler at {UNREACHABLE}" in log]
    assert len(failures) == 2, seen["logs"]
    assert "Pausing after failed transport task" in seen["status"]
    assert seen["paused after"] < 2 * 2 * CLIENT_TIMEOUT + 5
    assert node.exit_status == 0
    assert read_job_state(node.outputs.retrieved).ending is Ending.EXITED
