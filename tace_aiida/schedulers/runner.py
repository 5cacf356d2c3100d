"""The dask task of a ``tace.dask`` job: bookkeeping in the job's state file around the watchdog that runs the script.

It runs on a dask worker, which needs ``tace_aiida`` installed and the job's working directory on a file system it
shares with the AiiDA computer. It imports no AiiDA module.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

from distributed import get_worker

from tace_aiida.schedulers.job_state import (
    CANCEL_FILENAME,
    DaskJobState,
    Ending,
    JobStatus,
    load_job_state,
    write_job_state,
)


def run_job(
    working_directory: str,
    filename: str,
    rerunnable: bool,
    walltime: float | None,
    import_sys_environment: bool,
) -> int | None:
    """Run the submit script ``filename`` in ``working_directory`` and return its exit code.

    The task is idempotent: a job whose state file says it is done is not run again. When dask runs the task again
    because the worker of the previous attempt died, the job runs again only if it is ``rerunnable``; otherwise it is
    marked lost.
    """
    directory = Path(working_directory)
    state = load_job_state(directory)
    if state.status is JobStatus.DONE:
        return state.exit_code
    if (directory / CANCEL_FILENAME).exists():
        finish(directory, state, Ending.CANCELLED, None, "cancelled before it started")
        return None
    if state.status is JobStatus.RUNNING and not rerunnable:
        reason = f"worker {state.worker} died during attempt {state.attempts} and the job is not rerunnable"
        finish(directory, state, Ending.LOST, None, reason)
        return None

    state = state.replace(
        status=JobStatus.RUNNING,
        attempts=state.attempts + 1,
        started_at=time.time(),
        worker=get_worker().address,
        ending=None,
        reason=None,
    )
    write_job_state(directory, state)
    ending, exit_code, reason = watch(directory, filename, walltime, import_sys_environment)
    finish(directory, state, ending, exit_code, reason)
    return exit_code


def watch(
    directory: Path, filename: str, walltime: float | None, import_sys_environment: bool
) -> tuple[Ending, int | None, str | None]:
    """Run the script under :mod:`tace_aiida.schedulers.watchdog`; return how it ended, its exit code and a reason."""
    command = [sys.executable, "-m", "tace_aiida.schedulers.watchdog", str(directory), filename]
    command += ["--parent", str(os.getpid())]
    if walltime is not None:
        command += ["--walltime", str(walltime)]
    if not import_sys_environment:
        command.append("--no-sys-environment")
    completed = subprocess.run(command, capture_output=True, text=True, start_new_session=True, check=False)
    try:
        outcome = json.loads(completed.stdout)
        ending = Ending(outcome["ending"])
    except (ValueError, KeyError, TypeError):
        reason = f"the watchdog failed with exit code {completed.returncode}: {completed.stderr.strip()[-2000:]}"
        return Ending.LOST, None, reason
    reasons = {
        Ending.WALLTIME: f"killed after the walltime of {walltime} s",
        Ending.CANCELLED: "killed by kill_job",
        Ending.LOST: "the watchdog was stopped by a signal",
    }
    return ending, outcome["exit_code"], reasons.get(ending)


def finish(directory: Path, state: DaskJobState, ending: Ending, exit_code: int | None, reason: str | None) -> None:
    """Mark the job done in its state file."""
    done = state.replace(
        status=JobStatus.DONE, finished_at=time.time(), exit_code=exit_code, ending=ending, reason=reason
    )
    write_job_state(directory, done)
