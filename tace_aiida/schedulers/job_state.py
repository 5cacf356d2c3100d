"""The state file that each ``tace.dask`` job keeps in its working directory.

The scheduler plugin writes it when it submits the job (through its transport), the dask task rewrites it when the job
starts and ends (on the worker), and the scheduler marks it lost when dask no longer knows an unfinished job. It is a
single-line JSON object, replaced atomically, so that AiiDA can poll, kill and re-attach to a job after a restart.
"""

from __future__ import annotations

import dataclasses
import enum
import json
import os
import typing as t
from pathlib import Path

if t.TYPE_CHECKING:
    from aiida.orm import FolderData

__all__ = ("CANCEL_FILENAME", "STATE_FILENAME", "DaskJobState", "Ending", "JobStatus", "read_job_state")

STATE_FILENAME = ".tace_dask_job.json"
CANCEL_FILENAME = ".tace_dask_job.cancel"


class JobStatus(enum.StrEnum):
    """Where a job is in its life."""

    QUEUED = "queued"
    RUNNING = "running"
    DONE = "done"


class Ending(enum.StrEnum):
    """How a job that is done ended."""

    EXITED = "exited"
    """The submit script ended by itself; ``exit_code`` is its exit code."""
    WALLTIME = "walltime"
    """The watchdog killed the job when it exceeded ``max_wallclock_seconds``."""
    CANCELLED = "cancelled"
    """The job was killed through ``kill_job`` (e.g. ``verdi process kill``)."""
    LOST = "lost"
    """The job did not complete: its worker died, or dask forgot the task; ``reason`` says which."""


@dataclasses.dataclass(frozen=True)
class DaskJobState:
    """The content of a job's state file. Times are POSIX timestamps (seconds)."""

    job_id: str
    status: JobStatus
    gpus: int
    attempts: int = 0
    exit_code: int | None = None
    submitted_at: float | None = None
    started_at: float | None = None
    finished_at: float | None = None
    worker: str | None = None
    ending: Ending | None = None
    reason: str | None = None

    @property
    def lost(self) -> bool:
        """Whether the job is done without having completed (see :attr:`Ending.LOST`)."""
        return self.ending is Ending.LOST

    def replace(self, **changes: t.Any) -> DaskJobState:
        """Return a copy with ``changes`` applied."""
        return dataclasses.replace(self, **changes)

    def to_json(self) -> str:
        """Serialise to a single line of JSON."""
        return json.dumps(dataclasses.asdict(self), separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str) -> DaskJobState:
        """Parse the content of a state file.

        :raises ValueError: if ``text`` is not a valid job state.
        """
        try:
            data = json.loads(text)
            data["status"] = JobStatus(data["status"])
            data["ending"] = None if data.get("ending") is None else Ending(data["ending"])
            return cls(**data)
        except (TypeError, KeyError, ValueError) as exception:
            raise ValueError(f"invalid dask job state {text!r}: {exception}") from exception


def state_path(working_directory: str | os.PathLike[str]) -> Path:
    """Return the path of the state file of the job that runs in ``working_directory``."""
    return Path(working_directory) / STATE_FILENAME


def load_job_state(working_directory: str | os.PathLike[str]) -> DaskJobState:
    """Read the state file in a local ``working_directory``."""
    return DaskJobState.from_json(state_path(working_directory).read_text())


def write_job_state(working_directory: str | os.PathLike[str], state: DaskJobState) -> None:
    """Atomically replace the state file in a local ``working_directory``."""
    path = state_path(working_directory)
    partial = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    partial.write_text(state.to_json())
    os.replace(partial, path)


def read_job_state(folder: FolderData | str | os.PathLike[str]) -> DaskJobState:
    """Return the state of a ``tace.dask`` job, for parsers and tests.

    :param folder: the job's working directory (a local path), or a ``FolderData`` such as a parser's
        ``self.retrieved``; the CalcJob must then list :data:`STATE_FILENAME` in its ``retrieve_list``.
    :raises FileNotFoundError: if ``folder`` has no state file.
    :raises ValueError: if the state file is not a valid job state.
    """
    if isinstance(folder, (str, os.PathLike)):
        path = state_path(folder)
        if not path.is_file():
            raise FileNotFoundError(f"no dask job state file {STATE_FILENAME} in {folder}")
        return DaskJobState.from_json(path.read_text())
    try:
        text = folder.base.repository.get_object_content(STATE_FILENAME, mode="r")
    except FileNotFoundError as exception:
        raise FileNotFoundError(
            f"no dask job state file {STATE_FILENAME} in {folder}: add it to the retrieve_list of the CalcJob"
        ) from exception
    return DaskJobState.from_json(text)


def busy_seconds(states: t.Iterable[DaskJobState]) -> float:
    """Seconds in which at least one of the jobs ran: the union of their [started_at, finished_at] (jobs that did not
    start or end are left out)."""
    covered, end_so_far = 0.0, float("-inf")
    ran = [(s.started_at, s.finished_at) for s in states if s.started_at is not None and s.finished_at is not None]
    for start, end in sorted(ran):
        if end > end_so_far:
            covered += end - max(start, end_so_far)
            end_so_far = end
    return covered
