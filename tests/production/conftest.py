"""A real profile made by ``tace-aiida setup``, with its daemon (two workers) and a local dask cluster.

One per backend, for the whole session: ``embedded`` (SQLite + ZeroMQ) always; ``postgresql``
(PostgreSQL + RabbitMQ) when ``TACE_DB_PASSWORD`` is set and both servers answer on this machine
(``.ci/start-services`` starts them), else skipped, or failed under ``TACE_REQUIRE_EXTERNAL=1``.
Everything on the profile runs in other processes (``verdi``, ``driver.py``), so the pytest
profile of the other tests stays loaded in this one.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
import typing as t
from pathlib import Path

import pytest

from tests.external import _missing

DRIVER = Path(__file__).with_name("driver.py")
PROFILE = "tace-production-test"
DAEMON_WORKERS = 2


def answers(host: str, port: int) -> bool:
    """Whether a server accepts TCP connections on ``host:port``."""
    try:
        with socket.create_connection((host, port), timeout=2):
            return True
    except OSError:
        return False


class ProductionProfile:
    """A profile in its own ``AIIDA_PATH``, driven through subprocesses."""

    def __init__(self, backend: str, aiida_path: Path, environment: dict[str, str]) -> None:
        self.backend = backend
        self.aiida_path = aiida_path
        self.environment = {**environment, "AIIDA_PATH": str(aiida_path)}

    def run(self, *command: str, timeout: float = 300, check: bool = True) -> subprocess.CompletedProcess:
        result = subprocess.run(command, capture_output=True, text=True, env=self.environment, timeout=timeout)
        if check and result.returncode != 0:
            raise AssertionError(f"{' '.join(command)} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}")
        return result

    def verdi(self, *arguments: str, **kwargs: t.Any) -> subprocess.CompletedProcess:
        return self.run("verdi", "-p", PROFILE, *arguments, **kwargs)

    def driver(self, *arguments: str, timeout: float = 300) -> str:
        return self.run(sys.executable, str(DRIVER), *arguments, timeout=timeout).stdout

    def driver_process(self, *arguments: str) -> subprocess.Popen:
        """``driver.py`` running beside the test, its JSON lines on stdout."""
        return subprocess.Popen([sys.executable, str(DRIVER), *arguments], stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, env=self.environment)

    def facts(self, pk: int) -> dict:
        return json.loads(self.driver("facts", str(pk)))

    @property
    def circus_pid_file(self) -> Path:
        return self.aiida_path / ".aiida" / "daemon" / f"circus-{PROFILE}.pid"

    def worker_pids(self) -> list[int]:
        """The daemon's worker processes (children of its circus process running ``verdi ... daemon worker``)."""
        circus = int(self.circus_pid_file.read_text())
        found = subprocess.run(["pgrep", "-P", str(circus), "-f", "daemon worker"], capture_output=True, text=True)
        return [int(pid) for pid in found.stdout.split()]

    def start_daemon(self) -> None:
        self.verdi("daemon", "start", str(DAEMON_WORKERS))

    def daemon_running(self) -> bool:
        return self.circus_pid_file.is_file() and _state(int(self.circus_pid_file.read_text())) != "Z"

    def stop_daemon(self) -> None:
        """``verdi daemon stop``, waiting for the daemon to be gone (its reply can time out while it is busy)."""
        self.verdi("daemon", "stop", "--timeout", "60", check=False)
        deadline = time.monotonic() + 120
        while self.daemon_running():
            if time.monotonic() > deadline:
                raise AssertionError("the daemon did not stop within 120 s")
            time.sleep(0.5)

    def kill_workers_and_restart(self) -> tuple[list[int], str]:
        """SIGKILL every daemon worker (as the OOM killer would), wait for the daemon to replace them, then
        recover as after a crash: stop the daemon, ``verdi process repair``, start it again.

        Returns the killed pids and what ``verdi process repair`` did. aiida-core's ZeroMQ broker can lose the
        launch task of a process submitted by a worker that dies moments later; ``verdi process repair`` sends
        the tasks of such processes again. The daemon's own process and broker stay up while the workers die
        (killing them too races aiida-core 2.9's restart: new workers can read the dead broker's socket file).
        """
        pids = self.worker_pids()
        assert len(pids) == DAEMON_WORKERS, f"expected {DAEMON_WORKERS} daemon workers, found {pids}"
        for pid in pids:
            os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 60
        while True:
            replaced = [pid for pid in self.worker_pids() if pid not in pids and _state(pid) != "Z"]
            if len(replaced) == DAEMON_WORKERS:
                break
            if time.monotonic() > deadline:
                raise AssertionError(f"the daemon did not replace its killed workers {pids} within 60 s")
            time.sleep(0.2)
        self.stop_daemon()
        repair = self.verdi("process", "repair", "--force")
        self.start_daemon()
        repaired = " ".join(line for line in (repair.stdout + repair.stderr).splitlines() if "Revived" in line)
        return pids, repaired or "nothing to repair"


def _state(pid: int) -> str:
    """The state letter of process ``pid`` in /proc; ``Z`` also for one that is gone."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, IndexError):
        return "Z"


def _postgres_settings() -> tuple[list[str], dict[str, str], t.Callable[[], None]]:
    """``tace-aiida setup`` options for a fresh database of this session, its environment and its clean-up."""
    password = os.environ.get("TACE_DB_PASSWORD")
    if not password or not answers("localhost", 5432) or not answers("127.0.0.1", 5672):
        _missing("PostgreSQL (localhost:5432, user tace, TACE_DB_PASSWORD) and RabbitMQ (127.0.0.1:5672) are needed; "
                 "`bash .ci/start-services` starts them")
    import psycopg

    database = f"tace_test_{secrets.token_hex(4)}"
    with psycopg.connect(host="localhost", dbname="tace", user="tace", password=password, autocommit=True) as db:
        db.execute(f'CREATE DATABASE "{database}" ENCODING \'UTF8\' LC_COLLATE \'C.UTF-8\' LC_CTYPE \'C.UTF-8\' '
                   "TEMPLATE template0")

    def drop() -> None:
        with psycopg.connect(host="localhost", dbname="tace", user="tace", password=password, autocommit=True) as db:
            db.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')

    options = ["--storage", "postgresql", "--broker", "rabbitmq", "--db-name", database, "--db-user", "tace"]
    return options, {"TACE_DB_PASSWORD": password}, drop


@pytest.fixture(scope="session", params=["embedded", "postgresql"])
def production_profile(request, tmp_path_factory) -> t.Iterator[ProductionProfile]:
    """The profile of ``tace-aiida setup`` for the backend, with a running daemon and dask cluster."""
    options, extra_environment, clean_up = [], {}, lambda: None
    if request.param == "postgresql":
        options, extra_environment, clean_up = _postgres_settings()
    environment = {key: value for key, value in os.environ.items() if key != "TACE_DASK_SCHEDULER"}
    profile = ProductionProfile(request.param, tmp_path_factory.mktemp(f"aiida-{request.param}"),
                                {**environment, **extra_environment})
    try:
        profile.run("tace-aiida", "setup", "--profile", PROFILE, *options)
        profile.run("tace-aiida", "dask", "start", "--workers", "2")
        profile.start_daemon()
        yield profile
    finally:
        try:
            profile.stop_daemon()
        finally:
            profile.run("tace-aiida", "dask", "stop", check=False)
            clean_up()
