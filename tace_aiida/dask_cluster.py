"""Where the dask cluster of ``tace.dask`` jobs is, and a local cluster that outlives the process that starts it.

Address of the cluster
----------------------
``Computer.get_scheduler()`` creates the scheduler plugin without arguments, so the plugin finds the dask scheduler
through :func:`scheduler_address`, which takes the first of:

1. the environment variable ``TACE_DASK_SCHEDULER``: a scheduler address (``tcp://host:8786``) or the path of a dask
   scheduler file. It must be set where the AiiDA daemon runs, i.e. exported before ``verdi daemon start``;
2. the default scheduler file ``<AiiDA config folder>/tace-dask/scheduler.json`` (see :func:`default_directory`),
   which :func:`ensure_local_cluster` writes.

TLS
---
A scheduler at a ``tls://`` address is reached with client certificates (dask's ``Security``), taken from the first of:

1. ``<scheduler file>.tls.json`` beside the scheduler file (``scheduler.tls.json`` for ``scheduler.json``), which
   :func:`ensure_local_cluster` writes for a TLS cluster: ``{"ca_file": ..., "cert": ..., "key": ...}``;
2. dask's configuration where the AiiDA daemon runs: ``distributed.comm.tls.ca-file``,
   ``distributed.comm.tls.client.cert`` and ``distributed.comm.tls.client.key`` (a YAML file in ``~/.config/dask`` or
   the variables ``DASK_DISTRIBUTED__COMM__TLS__CA_FILE``, ``DASK_DISTRIBUTED__COMM__TLS__CLIENT__CERT`` and
   ``DASK_DISTRIBUTED__COMM__TLS__CLIENT__KEY``).

The scheduler requires every peer (worker or client) to present a certificate signed by its CA, so a client without
one is refused.

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
creates it, and keep at least one worker (a job asking for more GPUs than any connected worker has is refused). On a
shared network, give it ``protocol='tls://'`` and a ``security`` made from :func:`make_tls_files` (README, SLURM)::

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
import datetime
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
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from distributed import Client
from distributed.security import Security

__all__ = (
    "SCHEDULER_ENV",
    "ClusterProcess",
    "ClusterStatus",
    "DaskClusterError",
    "LocalCluster",
    "TlsFiles",
    "default_directory",
    "detect_gpus",
    "ensure_local_cluster",
    "local_cluster_status",
    "make_tls_files",
    "read_scheduler_file",
    "scheduler_address",
    "scheduler_connection",
    "stop_local_cluster",
)

SCHEDULER_ENV = "TACE_DASK_SCHEDULER"
SCHEDULER_FILENAME = "scheduler.json"
CLUSTER_FILENAME = "cluster.json"
CONNECT_TIMEOUT = 5.0
LOCAL_SCHEDULER_OPTIONS = "--host 127.0.0.1 --port 0 --dashboard-address 127.0.0.1:0"
LOCAL_WORKER_OPTIONS = (
    "--nworkers 1 --nthreads 1 --host 127.0.0.1 --death-timeout 60 --no-dashboard --dashboard-address 127.0.0.1:0"
)
"""The worker serves HTTP (metrics) even without its dashboard: on all interfaces unless given an address."""
TLS_SETTINGS = ("distributed.comm.tls.ca-file", "distributed.comm.tls.client.cert", "distributed.comm.tls.client.key")
"""Dask's configuration keys of the client certificate (read by ``Security()``)."""
TLS_DIRECTORY = "tls"
TLS_VALIDITY_DAYS = 3650


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


def tls_record(scheduler_file: Path) -> Path:
    """Return the path of the TLS record beside ``scheduler_file``: ``scheduler.json`` -> ``scheduler.tls.json``."""
    return scheduler_file.with_suffix(".tls.json")


@dataclasses.dataclass(frozen=True)
class TlsFiles:
    """A CA certificate, and the certificate and private key that the scheduler, workers and clients present."""

    ca_file: Path
    cert: Path
    key: Path

    def check(self) -> None:
        """Raise :class:`DaskClusterError` naming the first file that does not exist."""
        for name, path in dataclasses.asdict(self).items():
            if not Path(path).is_file():
                raise DaskClusterError(f"TLS {name} {path} does not exist")

    def security(self) -> Security:
        """Return the ``Security`` of a client presenting the certificate; encryption is required."""
        return Security(
            tls_ca_file=str(self.ca_file),
            tls_client_cert=str(self.cert),
            tls_client_key=str(self.key),
            require_encryption=True,
        )

    def options(self) -> list[str]:
        """Return the ``dask scheduler`` and ``dask worker`` options that serve TLS with the certificate."""
        files = ["--tls-ca-file", str(self.ca_file), "--tls-cert", str(self.cert), "--tls-key", str(self.key)]
        return ["--protocol", "tls", *files]

    def save(self, path: Path) -> None:
        """Write the absolute paths of the files to ``path`` (JSON)."""
        paths = {name: str(Path(value).resolve()) for name, value in dataclasses.asdict(self).items()}
        path.write_text(json.dumps(paths))

    @classmethod
    def load(cls, path: Path) -> TlsFiles | None:
        """Read a record written by :meth:`save`; None if there is none."""
        if not path.is_file():
            return None
        try:
            return cls(**{name: Path(value) for name, value in json.loads(path.read_text()).items()})
        except (ValueError, TypeError, AttributeError) as exception:
            raise DaskClusterError(f"invalid TLS record {path}: {exception}") from exception


def _scheduler_source() -> tuple[str, Path | None]:
    """Return the scheduler address and the scheduler file it was read from (None for an address given as such)."""
    value = os.environ.get(SCHEDULER_ENV, "").strip()
    if "://" in value:
        return value, None
    path = Path(value) if value else default_directory() / SCHEDULER_FILENAME
    if value or path.is_file():
        return read_scheduler_file(path), path
    raise DaskClusterError(
        f"no dask cluster configured: set {SCHEDULER_ENV} to a scheduler address or scheduler file, "
        f"or start a local cluster (`tace-aiida dask start`), which writes {path}"
    )


def scheduler_address() -> str:
    """Return the address of the dask scheduler (see the module documentation for the order of the sources)."""
    return _scheduler_source()[0]


def cluster_security(address: str, scheduler_file: Path | None = None) -> Security:
    """Return the ``Security`` to reach ``address``: the TLS record beside ``scheduler_file``, else dask's configuration.

    :raises DaskClusterError: for a ``tls://`` address without a client certificate, naming the settings to set.
    """
    record = None if scheduler_file is None else TlsFiles.load(tls_record(scheduler_file))
    if record is not None:
        record.check()
        return record.security()
    security = Security()
    if address.startswith("tls://") and not (security.tls_ca_file and security.tls_client_cert):
        raise DaskClusterError(
            f"the dask scheduler at {address} requires TLS, but no client certificate is configured: set "
            f"{', '.join(TLS_SETTINGS)} in dask's configuration where the AiiDA daemon runs (e.g. the environment "
            "variables DASK_DISTRIBUTED__COMM__TLS__CA_FILE, DASK_DISTRIBUTED__COMM__TLS__CLIENT__CERT and "
            "DASK_DISTRIBUTED__COMM__TLS__CLIENT__KEY)"
            + ("" if scheduler_file is None else f", or write {tls_record(scheduler_file)}")
        )
    return security


def scheduler_connection() -> tuple[str, Security]:
    """Return the address of the dask scheduler and the ``Security`` to reach it (see the module documentation)."""
    address, scheduler_file = _scheduler_source()
    return address, cluster_security(address, scheduler_file)


def _certificate(
    subject: str, public_key: ec.EllipticCurvePublicKey, issuer: str, signer: ec.EllipticCurvePrivateKey, ca: bool
) -> x509.Certificate:
    """Return a certificate of ``public_key`` for ``subject``, signed by ``signer`` on behalf of ``issuer``."""
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
        .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer)]))
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=TLS_VALIDITY_DAYS))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    return builder.sign(signer, hashes.SHA256())


def _write_private(path: Path, data: bytes) -> None:
    """Write ``data`` to a new file readable by its owner only (mode 0600)."""
    path.unlink(missing_ok=True)
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "wb") as handle:
        handle.write(data)


def make_tls_files(directory: Path) -> TlsFiles:
    """Return the TLS files in ``<directory>/tls``, made on the first call: a self-signed CA (whose key is not kept)
    and one certificate it signed, which the scheduler, the workers and the clients all present.

    The folder is mode 0700 and the key 0600. The certificate is valid for :data:`TLS_VALIDITY_DAYS` days.
    """
    folder = Path(directory) / TLS_DIRECTORY
    files = TlsFiles(folder / "ca.pem", folder / "cert.pem", folder / "key.pem")
    if all(Path(path).is_file() for path in dataclasses.asdict(files).values()):
        return files
    folder.mkdir(parents=True, exist_ok=True)
    folder.chmod(0o700)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    key = ec.generate_private_key(ec.SECP256R1())
    ca = _certificate("tace-aiida dask CA", ca_key.public_key(), "tace-aiida dask CA", ca_key, ca=True)
    cert = _certificate("tace-aiida dask", key.public_key(), "tace-aiida dask CA", ca_key, ca=False)
    pem = serialization.Encoding.PEM
    _write_private(files.key, key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    files.cert.write_bytes(cert.public_bytes(pem))
    files.ca_file.write_bytes(ca.public_bytes(pem))
    return files


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
    tls: TlsFiles | None = None

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

    @property
    def security(self) -> Security | None:
        """The ``Security`` of a client of the cluster: None (dask's default) without TLS."""
        return None if self.tls is None else self.tls.security()

    def save(self) -> None:
        """Write the record to ``<directory>/cluster.json``, and the TLS record beside the scheduler file."""
        if self.tls is not None:
            self.tls.save(tls_record(self.scheduler_file))
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
            tls = TlsFiles.load(tls_record(directory / SCHEDULER_FILENAME))
            return cls(directory, data["address"], data["gpus_per_worker"], processes, tls)
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
    tls: TlsFiles | None = None,
) -> LocalCluster:
    """Start a dask scheduler and ``n_workers`` workers on this machine, detached from the calling process.

    Each worker is ``dask worker --nworkers 1 --nthreads 1 --resources GPU=<gpus_per_worker>``, so it runs one job at a
    time. When GPUs are visible (:func:`detect_gpus`), each worker gets its own ``CUDA_VISIBLE_DEVICES`` block and
    ``n_workers`` defaults to one per block; without GPUs the workers declare ``GPU`` as a label only (for tests and
    CPU runs) and ``n_workers`` defaults to 1. The scheduler listens on 127.0.0.1 and writes
    ``<directory>/scheduler.json``; pids and logs are recorded in ``<directory>`` (default :func:`default_directory`).
    With ``tls``, the scheduler and workers speak TLS and accept only peers presenting a certificate signed by its CA;
    the files are named in ``<directory>/scheduler.tls.json``, where the ``tace.dask`` plugin finds them.

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
    if tls is not None:
        tls.check()
    if gpus and n_workers * gpus_per_worker > len(gpus):
        raise DaskClusterError(
            f"{n_workers} workers with {gpus_per_worker} GPU(s) each need {n_workers * gpus_per_worker} GPUs, "
            f"but {len(gpus)} are visible: {','.join(gpus)}"
        )

    with _locked(directory):
        existing = LocalCluster.load(directory)
        if existing is not None:
            if existing.scheduler.find() is not None:
                if tls is not None and existing.tls != tls:
                    raise DaskClusterError(
                        f"the local cluster in {directory} already runs at {existing.address} without the TLS files "
                        f"{tls}; stop it first"
                    )
                return existing
            _terminate(existing.processes, timeout)
            (directory / CLUSTER_FILENAME).unlink()
        scheduler_file = directory / SCHEDULER_FILENAME
        scheduler_file.unlink(missing_ok=True)
        tls_record(scheduler_file).unlink(missing_ok=True)

        dask = [sys.executable, "-m", "dask"]
        tls_options = [] if tls is None else tls.options()
        scheduler_command = [*dask, "scheduler", "--scheduler-file", str(scheduler_file), *tls_options]
        scheduler_command += LOCAL_SCHEDULER_OPTIONS.split()
        scheduler = _spawn("scheduler", scheduler_command, directory, dict(os.environ))
        processes = [scheduler]
        try:
            address = _wait_for_scheduler_file(scheduler_file, scheduler, timeout)
            worker_command = [*dask, "worker", "--scheduler-file", str(scheduler_file), *LOCAL_WORKER_OPTIONS.split()]
            worker_command += ["--local-directory", str(directory / "worker-space"), *tls_options]
            if gpus_per_worker:
                worker_command += ["--resources", f"GPU={gpus_per_worker}"]
            for index in range(n_workers):
                env = dict(os.environ)
                if gpus:
                    block = gpus[index * gpus_per_worker : (index + 1) * gpus_per_worker]
                    env["CUDA_VISIBLE_DEVICES"] = ",".join(block)
                name = f"worker-{index}"
                processes.append(_spawn(name, [*worker_command, "--name", f"tace-{name}"], directory, env))
            security = None if tls is None else tls.security()
            with Client(address, timeout=CONNECT_TIMEOUT, security=security, set_as_default=False) as client:
                client.wait_for_workers(n_workers, timeout=timeout)
        except Exception as exception:
            _terminate(processes, timeout=10.0)
            scheduler_file.unlink(missing_ok=True)
            message = f"the local dask cluster did not start: {exception}; logs in {directory}"
            raise DaskClusterError(message) from exception

        cluster = LocalCluster(directory, address, gpus_per_worker, tuple(processes), tls)
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
        with Client(
            cluster.address, timeout=CONNECT_TIMEOUT, security=cluster.security, set_as_default=False
        ) as client:
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
        tls_record(cluster.scheduler_file).unlink(missing_ok=True)
        return cluster
