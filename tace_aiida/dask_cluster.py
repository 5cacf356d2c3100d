"""Where the dask cluster of ``tace.dask`` jobs is, and a local cluster that outlives the process that starts it.

Address of the cluster
----------------------
``Computer.get_scheduler()`` creates the scheduler plugin without arguments, so the plugin finds the dask scheduler
through :func:`scheduler_address`, which takes the first of:

1. the environment variable ``TACE_DASK_SCHEDULER``: a scheduler address (``tcp://host:8786``) or the path of a dask
   scheduler file. It must be set where the AiiDA daemon runs, i.e. exported before ``verdi daemon start``;
2. the default scheduler file ``<AiiDA config folder>/tace-dask/scheduler.json`` (see :func:`default_directory`),
   which :func:`ensure_local_cluster` writes.

Every dask worker (and the dask scheduler, which unpickles the task graph) must have ``tace_aiida`` installed, and the
workers must see the AiiDA computer's working directories at the same paths (local disk or a shared file system).

Recipes
-------
Local cluster, one worker per visible GPU: ``tace-aiida dask start`` (or :func:`ensure_local_cluster`).

An existing cluster: point ``TACE_DASK_SCHEDULER`` at its address or scheduler file, e.g. started by hand with::

    dask scheduler --scheduler-file ~/.aiida/tace-dask/scheduler.json
    CUDA_VISIBLE_DEVICES=0 dask worker --scheduler-file ~/.aiida/tace-dask/scheduler.json \\
        --nworkers 1 --nthreads 1 --resources GPU=1

A SLURM cluster through dask-jobqueue, one GPU per worker; the cluster lives as long as the Python process that
creates it, and keep at least one worker (a job asking for more GPUs than any connected worker has is refused)::

    from dask.distributed import Client
    from dask_jobqueue import SLURMCluster
    from tace_aiida.dask_cluster import default_directory

    cluster = SLURMCluster(
        cores=8, processes=1, memory='32GB', walltime='12:00:00',
        job_extra_directives=['--gres=gpu:1'], worker_extra_args=['--resources', 'GPU=1'],
    )
    cluster.scale(jobs=4)
    client = Client(cluster)
    default_directory().mkdir(parents=True, exist_ok=True)
    client.write_scheduler_file(str(default_directory() / 'scheduler.json'))
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import json
import os
import shutil
import subprocess
import sys
import time
import typing as t
from pathlib import Path

import psutil
from aiida.manage.configuration.settings import AiiDAConfigDir
from distributed import Client

__all__ = (
    "SCHEDULER_ENV",
    "ClusterProcess",
    "ClusterStatus",
    "DaskClusterError",
    "LocalCluster",
    "default_directory",
    "detect_gpus",
    "ensure_local_cluster",
    "local_cluster_status",
    "read_scheduler_file",
    "scheduler_address",
    "stop_local_cluster",
)

SCHEDULER_ENV = "TACE_DASK_SCHEDULER"
SCHEDULER_FILENAME = "scheduler.json"
CLUSTER_FILENAME = "cluster.json"
CONNECT_TIMEOUT = 5.0
LOCAL_SCHEDULER_OPTIONS = "--host 127.0.0.1 --port 0 --dashboard-address 127.0.0.1:0"
LOCAL_WORKER_OPTIONS = "--nworkers 1 --nthreads 1 --host 127.0.0.1 --death-timeout 60 --no-dashboard"


class DaskClusterError(RuntimeError):
    """The dask cluster cannot be found, started or reached."""


def default_directory() -> Path:
    """Return the directory of the default cluster: ``<AiiDA config folder>/tace-dask``."""
    return AiiDAConfigDir.get() / "tace-dask"


def read_scheduler_file(path: str | os.PathLike[str]) -> str:
    """Return the scheduler address written in a dask scheduler file."""
    try:
        return json.loads(Path(path).read_text())["address"]
    except (OSError, ValueError, KeyError, TypeError) as exception:
        raise DaskClusterError(f"cannot read a dask scheduler address from {path}: {exception}") from exception


def scheduler_address() -> str:
    """Return the address of the dask scheduler (see the module documentation for the order of the sources)."""
    value = os.environ.get(SCHEDULER_ENV, "").strip()
    if "://" in value:
        return value
    if value:
        return read_scheduler_file(value)
    default_file = default_directory() / SCHEDULER_FILENAME
    if default_file.is_file():
        return read_scheduler_file(default_file)
    raise DaskClusterError(
        f"no dask cluster configured: set {SCHEDULER_ENV} to a scheduler address or scheduler file, "
        f"or start a local cluster (`tace-aiida dask start`), which writes {default_file}"
    )


def detect_gpus() -> list[str]:
    """Return the ids of the visible GPUs: from ``CUDA_VISIBLE_DEVICES`` if it is set, else from ``nvidia-smi -L``."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return [device.strip() for device in visible.split(",") if device.strip()]
    if shutil.which("nvidia-smi") is None:
        return []
    listing = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, check=False, timeout=30)
    return [str(index) for index, line in enumerate(listing.stdout.splitlines()) if line.startswith("GPU")]


@dataclasses.dataclass(frozen=True)
class ClusterProcess:
    """A process of a local cluster; ``create_time`` tells it apart from a later process with the same pid."""

    name: str
    pid: int
    create_time: float
    log: str
    cuda_visible_devices: str | None = None

    def find(self) -> psutil.Process | None:
        """Return the process if it still runs, else None.

        Its start time must match the record within a second, not exactly: psutil derives it from the boot
        time, which moves when the system clock is stepped, and an exact comparison then lost the process.
        """
        try:
            process = psutil.Process(self.pid)
            same = abs(process.create_time() - self.create_time) < 1.0
            alive = same and process.status() != psutil.STATUS_ZOMBIE
        except psutil.Error:
            return None
        return process if alive else None


@dataclasses.dataclass(frozen=True)
class LocalCluster:
    """A local cluster started by :func:`ensure_local_cluster`, as recorded in ``<directory>/cluster.json``."""

    directory: Path
    address: str
    gpus_per_worker: int
    processes: tuple[ClusterProcess, ...]

    @property
    def scheduler(self) -> ClusterProcess:
        """The dask scheduler process (recorded first)."""
        return self.processes[0]

    @property
    def workers(self) -> tuple[ClusterProcess, ...]:
        """The ``dask worker`` processes."""
        return self.processes[1:]

    @property
    def scheduler_file(self) -> Path:
        """The dask scheduler file of the cluster."""
        return self.directory / SCHEDULER_FILENAME

    def save(self) -> None:
        """Write the record to ``<directory>/cluster.json``."""
        data = {
            "address": self.address,
            "gpus_per_worker": self.gpus_per_worker,
            "processes": [dataclasses.asdict(process) for process in self.processes],
        }
        (self.directory / CLUSTER_FILENAME).write_text(json.dumps(data, indent=2))

    @classmethod
    def load(cls, directory: Path) -> LocalCluster | None:
        """Read the record in ``directory``; None if there is none."""
        path = directory / CLUSTER_FILENAME
        if not path.is_file():
            return None
        try:
            data = json.loads(path.read_text())
            processes = tuple(ClusterProcess(**process) for process in data["processes"])
            return cls(directory, data["address"], data["gpus_per_worker"], processes)
        except (ValueError, KeyError, TypeError) as exception:
            raise DaskClusterError(f"invalid local cluster record {path}: {exception}") from exception


@dataclasses.dataclass(frozen=True)
class ClusterStatus:
    """What :func:`local_cluster_status` found: the record, which of its processes run, and the connected workers."""

    cluster: LocalCluster
    alive: dict[str, bool]
    workers: dict[str, dict[str, float]]
    error: str | None = None


@contextlib.contextmanager
def _locked(directory: Path) -> t.Iterator[None]:
    """Hold an exclusive lock on ``directory`` so that concurrent starts and stops do not interleave."""
    directory.mkdir(parents=True, exist_ok=True)
    with open(directory / ".lock", "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        yield


def _spawn(name: str, command: list[str], directory: Path, env: dict[str, str]) -> ClusterProcess:
    """Start ``command`` detached (own session, output to ``<directory>/<name>.log``) and record it."""
    log = directory / f"{name}.log"
    with open(log, "ab") as output:
        process = subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=output,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=directory,
            start_new_session=True,
        )
    return ClusterProcess(
        name=name,
        pid=process.pid,
        create_time=psutil.Process(process.pid).create_time(),
        log=str(log),
        cuda_visible_devices=env.get("CUDA_VISIBLE_DEVICES"),
    )


def _wait_for_scheduler_file(path: Path, scheduler: ClusterProcess, timeout: float) -> str:
    """Wait until the scheduler has written its scheduler file, and return the address."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if scheduler.find() is None:
            raise DaskClusterError(f"the dask scheduler exited at start; see {scheduler.log}")
        if path.is_file():
            with contextlib.suppress(DaskClusterError):
                return read_scheduler_file(path)
        time.sleep(0.1)
    raise DaskClusterError(f"the dask scheduler did not write {path} within {timeout} s; see {scheduler.log}")


def _terminate(processes: t.Iterable[ClusterProcess], timeout: float) -> None:
    """Terminate the processes (and their children, e.g. a nanny's worker) and wait for them; kill the stubborn."""
    running = [process for process in (record.find() for record in processes) if process is not None]
    family = running + [child for process in running for child in process.children(recursive=True)]
    for process in family:
        with contextlib.suppress(psutil.Error):
            process.terminate()
    _, stubborn = psutil.wait_procs(family, timeout=timeout)
    for process in stubborn:
        with contextlib.suppress(psutil.Error):
            process.kill()
    psutil.wait_procs(stubborn, timeout=timeout)


def ensure_local_cluster(
    n_workers: int | None = None,
    gpus_per_worker: int = 1,
    directory: Path | None = None,
    timeout: float = 60.0,
) -> LocalCluster:
    """Start a dask scheduler and ``n_workers`` workers on this machine, detached from the calling process.

    Each worker is ``dask worker --nworkers 1 --nthreads 1 --resources GPU=<gpus_per_worker>``, so it runs one job at a
    time. When GPUs are visible (:func:`detect_gpus`), each worker gets its own ``CUDA_VISIBLE_DEVICES`` block and
    ``n_workers`` defaults to one per block; without GPUs the workers declare ``GPU`` as a label only (for tests and
    CPU runs) and ``n_workers`` defaults to 1. The scheduler listens on 127.0.0.1 and writes
    ``<directory>/scheduler.json``; pids and logs are recorded in ``<directory>`` (default :func:`default_directory`).

    Idempotent: if the cluster recorded in ``directory`` runs, it is returned and nothing is started.

    :raises DaskClusterError: if the arguments do not fit the visible GPUs or the cluster does not come up in time.
    """
    directory = default_directory() if directory is None else Path(directory)
    if gpus_per_worker < 0:
        raise DaskClusterError(f"gpus_per_worker must be 0 or more, got {gpus_per_worker}")
    gpus = detect_gpus()
    if n_workers is None:
        n_workers = len(gpus) // gpus_per_worker if gpus and gpus_per_worker else 1
    if n_workers < 1:
        raise DaskClusterError(f"n_workers must be 1 or more, got {n_workers} (visible GPUs: {gpus})")
    if gpus and n_workers * gpus_per_worker > len(gpus):
        raise DaskClusterError(
            f"{n_workers} workers with {gpus_per_worker} GPU(s) each need {n_workers * gpus_per_worker} GPUs, "
            f"but {len(gpus)} are visible: {','.join(gpus)}"
        )

    with _locked(directory):
        existing = LocalCluster.load(directory)
        if existing is not None:
            if existing.scheduler.find() is not None:
                return existing
            _terminate(existing.processes, timeout)
            (directory / CLUSTER_FILENAME).unlink()
        scheduler_file = directory / SCHEDULER_FILENAME
        scheduler_file.unlink(missing_ok=True)

        dask = [sys.executable, "-m", "dask"]
        scheduler = _spawn(
            "scheduler",
            [*dask, "scheduler", "--scheduler-file", str(scheduler_file), *LOCAL_SCHEDULER_OPTIONS.split()],
            directory,
            dict(os.environ),
        )
        processes = [scheduler]
        try:
            address = _wait_for_scheduler_file(scheduler_file, scheduler, timeout)
            worker_command = [*dask, "worker", "--scheduler-file", str(scheduler_file), *LOCAL_WORKER_OPTIONS.split()]
            worker_command += ["--local-directory", str(directory / "worker-space")]
            if gpus_per_worker:
                worker_command += ["--resources", f"GPU={gpus_per_worker}"]
            for index in range(n_workers):
                env = dict(os.environ)
                if gpus:
                    block = gpus[index * gpus_per_worker : (index + 1) * gpus_per_worker]
                    env["CUDA_VISIBLE_DEVICES"] = ",".join(block)
                name = f"worker-{index}"
                processes.append(_spawn(name, [*worker_command, "--name", f"tace-{name}"], directory, env))
            with Client(address, timeout=CONNECT_TIMEOUT, set_as_default=False) as client:
                client.wait_for_workers(n_workers, timeout=timeout)
        except Exception as exception:
            _terminate(processes, timeout=10.0)
            scheduler_file.unlink(missing_ok=True)
            message = f"the local dask cluster did not start: {exception}; logs in {directory}"
            raise DaskClusterError(message) from exception

        cluster = LocalCluster(directory, address, gpus_per_worker, tuple(processes))
        cluster.save()
        return cluster


def local_cluster_status(directory: Path | None = None) -> ClusterStatus | None:
    """Report the local cluster recorded in ``directory``: None if none is recorded."""
    directory = default_directory() if directory is None else Path(directory)
    cluster = LocalCluster.load(directory)
    if cluster is None:
        return None
    alive = {process.name: process.find() is not None for process in cluster.processes}
    try:
        with Client(cluster.address, timeout=CONNECT_TIMEOUT, set_as_default=False) as client:
            workers = client.scheduler_info(n_workers=-1)["workers"]
    except (OSError, TimeoutError) as exception:
        return ClusterStatus(cluster, alive, {}, f"cannot reach {cluster.address}: {exception}")
    resources = {address: dict(worker.get("resources", {})) for address, worker in workers.items()}
    return ClusterStatus(cluster, alive, resources)


def stop_local_cluster(directory: Path | None = None, timeout: float = 10.0) -> LocalCluster | None:
    """Stop the local cluster recorded in ``directory`` (workers first) and remove its record and scheduler file.

    Running jobs are killed by their watchdogs; AiiDA reports them lost once a cluster runs again. Returns the
    stopped cluster, or None if no cluster was recorded.
    """
    directory = default_directory() if directory is None else Path(directory)
    with _locked(directory):
        cluster = LocalCluster.load(directory)
        if cluster is None:
            return None
        _terminate(cluster.workers, timeout)
        _terminate([cluster.scheduler], timeout)
        (directory / CLUSTER_FILENAME).unlink()
        cluster.scheduler_file.unlink(missing_ok=True)
        return cluster
