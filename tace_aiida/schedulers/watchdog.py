"""Run a job's submit script in its own process group and kill the whole group when the job must stop.

:func:`tace_aiida.schedulers.runner.run_job` starts this module as ``python -m tace_aiida.schedulers.watchdog`` on the
dask worker. Being a separate process, it outlives a worker that dies: it then kills the job's process group, so no
orphan keeps using the device. It also stops the job when its cancel file appears (``kill_job``) or when the walltime
is exceeded, and always kills what the script left running in its group when it ends. SIGTERM, SIGINT or SIGHUP sent
to the watchdog stop the job too. It prints one JSON line, ``{"ending": ..., "exit_code": ...}``. Only the standard
library is imported, to start fast.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import threading
import time
from pathlib import Path

from tace_aiida.schedulers.job_state import CANCEL_FILENAME, Ending

POLL_SECONDS = 0.1
GRACE_SECONDS = 3.0


def spawn(directory: Path, filename: str, import_sys_environment: bool) -> subprocess.Popen[bytes]:
    """Start ``bash filename`` in ``directory`` as the leader of a new session and process group."""
    if import_sys_environment:
        env = None
    else:
        env = {key: value for key, value in os.environ.items() if key == "CUDA_VISIBLE_DEVICES"}
    return subprocess.Popen(
        ["bash", filename],
        cwd=directory,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )


def wait(
    process: subprocess.Popen[bytes],
    parent: int,
    cancel_file: Path,
    walltime: float | None,
    stop: threading.Event,
) -> Ending:
    """Wait until the script ends, the job is cancelled, the walltime passes, or the job must stop because the parent
    (the dask worker) died or ``stop`` was set."""
    deadline = None if walltime is None else time.monotonic() + walltime
    while True:
        try:
            process.wait(timeout=POLL_SECONDS)
            return Ending.EXITED
        except subprocess.TimeoutExpired:
            pass
        if stop.is_set() or os.getppid() != parent:
            return Ending.LOST
        if cancel_file.exists():
            return Ending.CANCELLED
        if deadline is not None and time.monotonic() > deadline:
            return Ending.WALLTIME


def kill_group(leader: subprocess.Popen[bytes], grace: float = GRACE_SECONDS) -> None:
    """Send SIGTERM to the leader's process group, then SIGKILL to whatever is left after ``grace`` seconds."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(leader.pid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline:
            leader.poll()
            try:
                os.killpg(leader.pid, 0)
            except ProcessLookupError:
                return
            time.sleep(POLL_SECONDS)
    leader.wait()


def main(argv: list[str] | None = None) -> None:
    """Command line entry point: run the script, then print how it ended."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("directory", type=Path, help="working directory of the job")
    parser.add_argument("filename", help="submit script, relative to the working directory")
    parser.add_argument("--parent", type=int, required=True, help="pid of the dask worker process")
    parser.add_argument("--walltime", type=float, default=None, help="seconds after which the job is killed")
    parser.add_argument("--no-sys-environment", action="store_true", help="run the script in an empty environment")
    args = parser.parse_args(argv)

    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, lambda *_: stop.set())
    process = spawn(args.directory, args.filename, not args.no_sys_environment)
    ending = wait(process, args.parent, args.directory / CANCEL_FILENAME, args.walltime, stop)
    kill_group(process)
    print(json.dumps({"ending": ending.value, "exit_code": process.returncode}), flush=True)


if __name__ == "__main__":
    main()
