"""Scheduler plugin ``tace.dask``: run each CalcJob's submit script as one task on a dask cluster of GPU workers.

The job id is the job's working directory; it is also the key of the dask task, and the job's state is kept in
:data:`~tace_aiida.schedulers.job_state.STATE_FILENAME` in that directory, so that any scheduler instance (e.g. after
a daemon restart) can poll and kill the job. The number of GPUs comes from the ``num_gpus`` job resource (default 1,
0 for CPU jobs) and is written in the submit script as ``#DASK gpus=N``; a ``#DASK`` line in the custom scheduler
commands overrides it. The task asks dask for ``resources={'GPU': N}``. Where the cluster is, and the client
certificate for a ``tls://`` scheduler: :func:`tace_aiida.dask_cluster.scheduler_connection`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import time
import typing as t
from datetime import UTC, datetime

from aiida.common.escaping import escape_for_bash
from aiida.common.extendeddicts import AttributeDict
from aiida.engine import CalcJob
from aiida.schedulers import Scheduler, SchedulerError
from aiida.schedulers.datastructures import JobInfo, JobState, JobTemplate, NodeNumberJobResource
from distributed import Client, Future, fire_and_forget
from distributed.security import Security

from tace_aiida.dask_cluster import DaskClusterError, scheduler_connection
from tace_aiida.schedulers.job_state import (
    CANCEL_FILENAME,
    STATE_FILENAME,
    DaskJobState,
    Ending,
    JobStatus,
)
from tace_aiida.schedulers.runner import run_job

if t.TYPE_CHECKING:
    from aiida.engine.processes.exit_code import ExitCode

__all__ = ("DaskJobResource", "DaskScheduler", "JobDirectives", "parse_directives")

DIRECTIVE = "#DASK"
DEFAULT_GPUS = 1
CLIENT_TIMEOUT = 5.0
"""Seconds to wait for the dask scheduler: the plugin runs inside the daemon's event loop."""
SEPARATOR = "\x1e"
READ_FILES = r'for f in {paths}; do if [ -e "$f" ]; then printf Y; cat "$f"; else printf N; fi; printf "\036"; done'
"""Shell loop printing, for each file, Y and its content (N if it is missing), then SEPARATOR (octal 036)."""
FORGOTTEN_TASK_STATES = (None, "forgotten", "memory", "erred")
"""Dask task states of a job that will not (or no longer) run: ``None`` is a task dask does not know."""

_clients: dict[str, Client] = {}


class DaskJobResource(NodeNumberJobResource):
    """Resources of a job that runs as one dask task: one machine, MPI processes, and ``num_gpus`` GPUs (default 1)."""

    _default_fields = (*NodeNumberJobResource._default_fields, "num_gpus")

    if t.TYPE_CHECKING:
        num_gpus: int

    @classmethod
    def validate_resources(cls, **kwargs: t.Any) -> AttributeDict:
        """Validate the resources; ``num_gpus`` must be an integer of 0 or more and ``num_machines`` must be 1.

        :raises ValueError: if the resources are invalid or incomplete.
        """
        num_gpus = kwargs.pop("num_gpus", DEFAULT_GPUS)
        resources = super().validate_resources(**kwargs)
        try:
            resources.num_gpus = int(num_gpus)
        except (TypeError, ValueError) as exception:
            raise ValueError(f"`num_gpus` must be an integer, got {num_gpus!r}") from exception
        if resources.num_gpus < 0:
            raise ValueError(f"`num_gpus` must be 0 or more, got {resources.num_gpus}")
        if resources.num_machines != 1:
            raise ValueError(f"`num_machines` must be 1 (a dask task runs on one worker), got {resources.num_machines}")
        return resources

    @classmethod
    def accepts_default_memory_per_machine(cls) -> t.Literal[False]:
        """Return False: the dask scheduler does not limit memory."""
        return False


@dataclasses.dataclass(frozen=True)
class JobDirectives:
    """What the ``#DASK key=value`` lines of a submit script ask for."""

    gpus: int = DEFAULT_GPUS
    walltime: float | None = None
    rerunnable: bool = False
    import_sys_environment: bool = True


def _parse_bool(key: str, value: str) -> bool:
    """Parse the ``true``/``false`` value of directive ``key``."""
    if value not in ("true", "false"):
        raise SchedulerError(f"dask directive {key}={value!r} must be true or false")
    return value == "true"


def _parse_number(key: str, value: str, kind: type[int] | type[float], minimum: float) -> t.Any:
    """Parse the value of directive ``key`` as a ``kind`` of at least ``minimum``."""
    try:
        number = kind(value)
    except ValueError as exception:
        raise SchedulerError(f"dask directive {key}={value!r} is not a valid {kind.__name__}") from exception
    if number < minimum:
        raise SchedulerError(f"dask directive {key}={value!r} must be at least {minimum}")
    return number


def parse_directives(script: str) -> JobDirectives:
    """Read the ``#DASK`` lines of a submit script; a later value of a key overrides an earlier one.

    :raises SchedulerError: for an unknown key or an invalid value, naming it.
    """
    values: dict[str, t.Any] = {}
    for line in script.splitlines():
        if not line.startswith(f"{DIRECTIVE} "):
            continue
        for item in line[len(DIRECTIVE) :].split():
            key, _, value = item.partition("=")
            if key == "gpus":
                values[key] = _parse_number(key, value, int, 0)
            elif key == "walltime":
                values[key] = _parse_number(key, value, float, 1)
            elif key in ("rerunnable", "import_sys_environment"):
                values[key] = _parse_bool(key, value)
            else:
                fields = ", ".join(field.name for field in dataclasses.fields(JobDirectives))
                raise SchedulerError(f"unknown dask directive {item!r} in line {line!r}; known keys: {fields}")
    return JobDirectives(**values)


def _connect(address: str, security: Security | None = None) -> Client:
    """Return a connected client of the dask scheduler at ``address``, reused across calls.

    :raises SchedulerError: naming the address if the scheduler does not answer within :data:`CLIENT_TIMEOUT` s.
    """
    client = _clients.get(address)
    if client is not None and client.status == "running":
        return client
    if client is not None:
        with contextlib.suppress(OSError, TimeoutError):
            client.close(timeout=CLIENT_TIMEOUT)
    try:
        client = Client(address, timeout=CLIENT_TIMEOUT, security=security, set_as_default=False)
    except (OSError, TimeoutError) as exception:
        raise SchedulerError(f"cannot connect to the dask scheduler at {address}: {exception}") from exception
    _clients[address] = client
    return client


def _timestamp(seconds: float | None) -> datetime | None:
    """Convert a POSIX timestamp to an aware datetime."""
    return None if seconds is None else datetime.fromtimestamp(seconds, UTC)


class DaskScheduler(Scheduler):
    """Run each job as one task, with ``resources={'GPU': num_gpus}``, on a dask cluster."""

    _logger = Scheduler._logger.getChild("dask")

    # AiiDA passes the job ids to ``get_jobs``; dask has no notion of users.
    _features = {
        "can_query_by_user": False,
    }

    _job_resource_class = DaskJobResource

    def _get_submit_script_header(self, job_tmpl: JobTemplate) -> str:
        """Return the submit script header: the ``#DASK`` directives, then the output redirections.

        :param job_tmpl: a ``JobTemplate`` instance with relevant parameters set.
        """
        resource = job_tmpl.job_resource
        lines = [
            f"{DIRECTIVE} gpus={resource.num_gpus}",
            f"{DIRECTIVE} rerunnable={str(bool(job_tmpl.rerunnable)).lower()}",
        ]

        if job_tmpl.max_wallclock_seconds is not None:
            lines.append(f"{DIRECTIVE} walltime={int(job_tmpl.max_wallclock_seconds)}")

        if job_tmpl.import_sys_environment is False:
            lines.append(f"{DIRECTIVE} import_sys_environment=false")

        if job_tmpl.custom_scheduler_commands:
            lines.append(job_tmpl.custom_scheduler_commands)

        if job_tmpl.sched_output_path:
            lines.append(f"exec > {escape_for_bash(job_tmpl.sched_output_path)}")

        if job_tmpl.sched_error_path and not job_tmpl.sched_join_files:
            lines.append(f"exec 2> {escape_for_bash(job_tmpl.sched_error_path)}")
        else:
            lines.append("exec 2>&1")

        if job_tmpl.max_memory_kb:
            self.logger.warning("Physical memory limiting is not supported by the dask scheduler.")

        if resource.num_cores_per_mpiproc:
            lines.append(f"export OMP_NUM_THREADS={resource.num_cores_per_mpiproc}")

        return "\n".join(lines)

    def submit_job(self, working_directory: str, filename: str) -> str:
        """Submit the script as a dask task whose key is the job id, the working directory.

        Idempotent: a job that dask already knows, or that already started, is not submitted again. Once dask has
        accepted the task, this method does not raise.

        :raises SchedulerError: if the job asks for more GPUs than any connected worker has, if the script has an
            invalid ``#DASK`` directive, or if the dask scheduler cannot be reached.
        """
        job_id = working_directory
        script, previous_state = self._read_files([f"{job_id}/{filename}", f"{job_id}/{STATE_FILENAME}"])
        if script is None:
            raise SchedulerError(f"the submit script {job_id}/{filename} does not exist")
        directives = parse_directives(script)
        previous = None if previous_state is None else self._parse_state(job_id, previous_state)
        address, client = self._client()

        if previous is not None and (
            previous.status is not JobStatus.QUEUED or self._task_states(client, address, [job_id])[job_id] is not None
        ):
            self.logger.info(f"job {job_id} was already submitted to the dask scheduler at {address}")
            return job_id

        self._check_gpus(client, address, job_id, directives.gpus)
        self._write_state(DaskJobState(job_id, JobStatus.QUEUED, directives.gpus, submitted_at=time.time()))
        try:
            future = client.submit(
                run_job,
                working_directory,
                filename,
                directives.rerunnable,
                directives.walltime,
                directives.import_sys_environment,
                key=job_id,
                resources={"GPU": directives.gpus} if directives.gpus else None,
                pure=False,
                retries=0,
            )
            fire_and_forget(future)
        except Exception as exception:
            raise SchedulerError(
                f"submitting job {job_id} to the dask scheduler at {address} failed: {exception}"
            ) from exception
        self._await_acceptance(client, address, future)
        return job_id

    def get_jobs(
        self,
        jobs: list[str] | None = None,
        user: str | None = None,
        as_dict: bool = False,
    ) -> list[JobInfo] | dict[str, JobInfo]:
        """Return the state of the given jobs, from their state files and, for jobs not done, the dask scheduler.

        A job that dask no longer knows and whose state file does not say it is done (its worker died for good, or the
        dask scheduler restarted) is marked lost in its state file and reported done. Jobs done are reported without
        asking dask. Without ``jobs``, only checks that the dask scheduler can be reached and returns no job.

        :raises SchedulerError: if the dask scheduler is needed but cannot be reached, or a state file cannot be read.
        """
        job_ids = list(jobs or [])
        states = self._read_states(job_ids) if job_ids else {}
        pending = [job_id for job_id, state in states.items() if state is None or state.status is not JobStatus.DONE]
        task_states: dict[str, str | None] = {}
        if pending or not job_ids:
            address, client = self._client()
            task_states = self._task_states(client, address, pending) if pending else {}
            gone = [job_id for job_id in pending if states[job_id] is not None and task_states[job_id] in FORGOTTEN_TASK_STATES]
            # The runner writes the final state before its task ends: read again what may have finished meanwhile.
            states.update(self._read_states(gone) if gone else {})
            for job_id in gone:
                if states[job_id].status is not JobStatus.DONE:
                    states[job_id] = self._mark_lost(states[job_id], address, task_states[job_id])
        job_infos = {job_id: self._job_info(job_id, states[job_id], task_states.get(job_id)) for job_id in job_ids}
        return job_infos if as_dict else list(job_infos.values())

    def kill_job(self, jobid: str) -> bool:
        """Kill a job: its watchdog kills the script's process group when the cancel file appears, and the dask task is
        cancelled so that a queued job never starts (if dask cannot be reached, the task ends at once when it starts).

        :returns: True if the cancel file was written, False otherwise.
        """
        retval, _, stderr = self.transport.exec_command_wait(f"touch {escape_for_bash(f'{jobid}/{CANCEL_FILENAME}')}")
        if retval != 0:
            self.logger.error(f"cannot write the cancel file of job {jobid}: retval={retval}; stderr={stderr}")
            return False
        try:
            _, client = self._client()
            client.cancel([Future(jobid, client)], force=True, reason="killed through AiiDA")
        except (SchedulerError, OSError, TimeoutError) as exception:
            self.logger.warning(
                f"cancelling the dask task of job {jobid} failed, its cancel file stops it: {exception}"
            )
        self.logger.info(f"killing job {jobid}")
        return True

    def _get_detailed_job_info_command(self, job_id: str) -> str:
        """Return the command that prints the job's state file."""
        return f"cat {escape_for_bash(f'{job_id}/{STATE_FILENAME}')}"

    def parse_output(
        self,
        detailed_job_info: dict[str, str | int] | None = None,
        stdout: str | None = None,
        stderr: str | None = None,
    ) -> ExitCode | None:
        """Return ``ERROR_SCHEDULER_NODE_FAILURE`` for a lost job and ``ERROR_SCHEDULER_OUT_OF_WALLTIME`` for a job
        killed at its walltime, from the state file in ``detailed_job_info['stdout']``.
        """
        if detailed_job_info is None:
            return None
        state = DaskJobState.from_json(str(detailed_job_info["stdout"]))
        if state.ending is Ending.LOST:
            self.logger.warning(f"job {state.job_id} was lost: {state.reason}")
            return CalcJob.exit_codes.ERROR_SCHEDULER_NODE_FAILURE  # type: ignore[no-any-return]
        if state.ending is Ending.WALLTIME:
            return CalcJob.exit_codes.ERROR_SCHEDULER_OUT_OF_WALLTIME  # type: ignore[no-any-return]
        return None

    def _client(self) -> tuple[str, Client]:
        """Return the address of the dask scheduler and a client connected to it."""
        try:
            address, security = scheduler_connection()
        except DaskClusterError as exception:
            raise SchedulerError(str(exception)) from exception
        return address, _connect(address, security)

    def _rpc(self, client: Client, address: str, name: str, **kwargs: t.Any) -> t.Any:
        """Call the dask scheduler's handler ``name`` with a short timeout."""
        try:
            return client.sync(getattr(client.scheduler, name), callback_timeout=CLIENT_TIMEOUT, **kwargs)
        except (OSError, TimeoutError) as exception:
            raise SchedulerError(f"the dask scheduler at {address} did not answer {name}: {exception}") from exception

    def _task_states(self, client: Client, address: str, job_ids: list[str]) -> dict[str, str | None]:
        """Return the dask state of each job's task (None for a task dask does not know)."""
        return self._rpc(client, address, "get_task_status", keys=job_ids)

    def _check_gpus(self, client: Client, address: str, job_id: str, gpus: int) -> None:
        """Refuse a job that asks for more GPUs than any connected worker has: dask would queue it forever."""
        if gpus == 0:
            return
        workers = self._rpc(client, address, "identity")["workers"]
        largest = max((worker["resources"].get("GPU", 0) for worker in workers.values()), default=0)
        if gpus > largest:
            raise SchedulerError(
                f"job {job_id} asks for {gpus} GPU(s), but the largest of the {len(workers)} worker(s) connected to "
                f"the dask scheduler at {address} has GPU={largest:g}: dask would queue it forever"
            )

    def _await_acceptance(self, client: Client, address: str, future: Future) -> None:
        """Wait until the dask scheduler knows the task of ``future``; holding the future keeps dask from forgetting
        the task meanwhile, even if it already finished."""
        deadline = time.monotonic() + CLIENT_TIMEOUT
        while self._task_states(client, address, [future.key])[future.key] is None:
            if time.monotonic() > deadline:
                raise SchedulerError(f"the dask scheduler at {address} did not accept job {future.key} in time")
            time.sleep(0.01)

    def _read_files(self, paths: list[str]) -> list[str | None]:
        """Read text files in one command (a command may cost a login shell); None for a missing file."""
        command = READ_FILES.format(paths=" ".join(escape_for_bash(path) for path in paths))
        retval, stdout, stderr = self.transport.exec_command_wait(command)
        records = stdout.split(SEPARATOR)
        if retval != 0 or len(records) != len(paths) + 1:
            raise SchedulerError(f"reading {paths} failed with exit code {retval}: {stderr.strip()}")
        return [record[1:] if record.startswith("Y") else None for record in records[:-1]]

    @staticmethod
    def _parse_state(job_id: str, text: str) -> DaskJobState:
        """Parse the state file of job ``job_id``."""
        try:
            return DaskJobState.from_json(text)
        except ValueError as exception:
            raise SchedulerError(f"cannot read the state of job {job_id}: {exception}") from exception

    def _read_states(self, job_ids: list[str]) -> dict[str, DaskJobState | None]:
        """Read the state files of the jobs in one command; None for a job without a state file."""
        texts = self._read_files([f"{job_id}/{STATE_FILENAME}" for job_id in job_ids])
        return {
            job_id: None if text is None else self._parse_state(job_id, text)
            for job_id, text in zip(job_ids, texts, strict=True)
        }

    def _write_state(self, state: DaskJobState, cancel: bool = False) -> None:
        """Atomically replace a job's state file through the transport; with ``cancel``, also leave its cancel file."""
        path = escape_for_bash(f"{state.job_id}/{STATE_FILENAME}")
        partial = escape_for_bash(f"{state.job_id}/{STATE_FILENAME}.tmp")
        command = f"cat > {partial} && mv -f {partial} {path}"
        if cancel:
            command += f" && touch {escape_for_bash(f'{state.job_id}/{CANCEL_FILENAME}')}"
        retval, _, stderr = self.transport.exec_command_wait(command, stdin=state.to_json())
        if retval != 0:
            raise SchedulerError(f"cannot write the state file of job {state.job_id}: {stderr.strip()}")

    def _mark_lost(self, state: DaskJobState, address: str, task_state: str | None) -> DaskJobState:
        """Mark a job that dask no longer runs as lost, and leave a cancel file in case a stray payload still runs."""
        known = "does not know its task" if task_state is None else f"has its task in state {task_state!r}"
        lost = state.replace(
            status=JobStatus.DONE,
            finished_at=time.time(),
            ending=Ending.LOST,
            reason=f"the dask scheduler at {address} {known}, but the job was {state.status.value}",
        )
        self._write_state(lost, cancel=True)
        self.logger.warning(f"job {state.job_id} was lost: {lost.reason}")
        return lost

    def _job_info(self, job_id: str, state: DaskJobState | None, task_state: str | None) -> JobInfo:
        """Translate a job's state file and dask task state into a ``JobInfo``."""
        info = JobInfo()
        info.job_id = job_id
        info.job_substate = task_state
        if state is None:
            info.job_state = JobState.QUEUED if task_state is not None else JobState.DONE
            return info
        if state.status is JobStatus.DONE:
            info.job_state = JobState.DONE
        elif state.status is JobStatus.RUNNING and task_state == "processing":
            info.job_state = JobState.RUNNING
        else:
            info.job_state = JobState.QUEUED
        info.annotation = state.reason
        info.submission_time = _timestamp(state.submitted_at)
        info.dispatch_time = _timestamp(state.started_at)
        info.finish_time = _timestamp(state.finished_at)
        if state.worker is not None:
            info.allocated_machines_raw = state.worker
        if state.exit_code is not None:
            info.exit_status = state.exit_code
        if state.started_at is not None:
            info.wallclock_time_seconds = int((state.finished_at or time.time()) - state.started_at)
        return info
