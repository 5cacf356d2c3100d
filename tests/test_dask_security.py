"""TLS with client certificates for the dask cluster of ``tace.dask`` jobs, and the local cluster bound to loopback.

The slow tests start a real local TLS cluster of two workers through ``ensure_local_cluster`` and run a CalcJob on it.
"""

from __future__ import annotations

import socket
import ssl
import stat
import time
from pathlib import Path

import dask.config
import pytest
from aiida.schedulers import SchedulerError
from click.testing import CliRunner
from cryptography import x509
from distributed import Client
from distributed.security import Security

from tace_aiida.cli_dask import dask as dask_cli
from tace_aiida.dask_cluster import (
    SCHEDULER_ENV,
    TLS_SETTINGS,
    DaskClusterError,
    ensure_local_cluster,
    make_tls_files,
    scheduler_connection,
    stop_local_cluster,
)
from tace_aiida.schedulers.dask import DaskScheduler
from tace_aiida.schedulers.job_state import read_job_state
from tests.conftest_dask import WORKERS, ShellJob, listening_hosts, run_concurrently, shell_job

pytest_plugins = ["aiida.tools.pytest_fixtures", "tests.conftest_dask"]

NO_TLS_CONFIG = dict.fromkeys(TLS_SETTINGS)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """A detached local TLS cluster of two workers with certificates made in its folder, found through
    ``TACE_DASK_SCHEDULER``; it replaces the plain cluster of ``tests.conftest_dask`` in this module."""
    directory = tmp_path_factory.mktemp("dask-tls-cluster")
    with pytest.MonkeyPatch.context() as monkeypatch, dask.config.set(NO_TLS_CONFIG):
        monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
        started = ensure_local_cluster(WORKERS, gpus_per_worker=1, directory=directory, tls=make_tls_files(directory))
        monkeypatch.setenv(SCHEDULER_ENV, str(started.scheduler_file))
        try:
            yield started
        finally:
            stop_local_cluster(directory)


def host_and_port(address: str) -> tuple[str, int]:
    """Split ``tls://host:port``."""
    host, port = address.split("://")[1].rsplit(":", 1)
    return host, int(port)


def answer_without_certificate(host: str, port: int, ca_file: Path) -> bytes:
    """Talk TLS to ``host:port`` presenting no client certificate; return its first byte (b"" if it hung up)."""
    context = ssl.create_default_context(cafile=str(ca_file))
    context.check_hostname = False
    with socket.create_connection((host, port), timeout=5) as raw, context.wrap_socket(raw) as tls:
        try:
            tls.sendall(b"\x00" * 8)
            return tls.recv(1)
        except (ssl.SSLError, ConnectionError):
            return b""


# Fast tests: no cluster.


def test_make_tls_files(tmp_path):
    files = make_tls_files(tmp_path)
    assert stat.S_IMODE(files.key.stat().st_mode) == 0o600
    assert stat.S_IMODE(files.key.parent.stat().st_mode) == 0o700
    ca = x509.load_pem_x509_certificate(files.ca_file.read_bytes())
    cert = x509.load_pem_x509_certificate(files.cert.read_bytes())
    cert.verify_directly_issued_by(ca)
    assert sorted(path.name for path in files.key.parent.iterdir()) == ["ca.pem", "cert.pem", "key.pem"]
    made = files.cert.read_bytes()
    assert make_tls_files(tmp_path) == files and files.cert.read_bytes() == made


def test_tls_address_without_certificate_is_refused(monkeypatch, tmp_path):
    monkeypatch.setenv(SCHEDULER_ENV, "tls://127.0.0.1:1")
    with dask.config.set(NO_TLS_CONFIG), pytest.raises(SchedulerError) as refused:
        DaskScheduler().get_jobs()
    assert "tls://127.0.0.1:1" in str(refused.value)
    assert all(setting in str(refused.value) for setting in TLS_SETTINGS)

    scheduler_file = tmp_path / "scheduler.json"
    scheduler_file.write_text('{"address": "tls://127.0.0.1:2"}')
    monkeypatch.setenv(SCHEDULER_ENV, str(scheduler_file))
    with (
        dask.config.set(NO_TLS_CONFIG),
        pytest.raises(SchedulerError, match=r"tls://127\.0\.0\.1:2.*scheduler\.tls\.json"),
    ):
        DaskScheduler().get_jobs()


def test_tls_certificate_from_dask_config(monkeypatch, tmp_path):
    files = make_tls_files(tmp_path)
    monkeypatch.setenv(SCHEDULER_ENV, "tls://127.0.0.1:1")
    settings = dict(zip(TLS_SETTINGS, (str(files.ca_file), str(files.cert), str(files.key)), strict=True))
    with dask.config.set(settings):
        address, security = scheduler_connection()
    assert address == "tls://127.0.0.1:1"
    assert (security.tls_ca_file, security.tls_client_cert, security.tls_client_key) == tuple(settings.values())


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (["--tls", "--tls-cert", "{cert}"], "either --tls or the files"),
        (["--tls-cert", "{cert}"], "missing: --tls-ca-file, --tls-key"),
    ],
)
def test_cli_tls_options_refused(tmp_path, options, message):
    files = make_tls_files(tmp_path / "given")
    arguments = [option.format(cert=files.cert) for option in options]
    result = CliRunner().invoke(dask_cli, ["start", "--directory", str(tmp_path / "cluster"), *arguments])
    assert result.exit_code == 2 and message in result.output, result.output
    assert not (tmp_path / "cluster" / "scheduler.json").exists()


# Slow tests: a real local TLS cluster.


@pytest.mark.slow
def test_tls_cluster_listens_on_loopback_only(cluster):
    assert cluster.address.startswith("tls://127.0.0.1:")
    with Client(cluster.address, timeout=5, security=cluster.security, set_as_default=False) as client:
        workers = client.scheduler_info(n_workers=-1)["workers"]
    assert len(workers) == WORKERS
    assert all(address.startswith("tls://127.0.0.1:") for address in workers)
    hosts = listening_hosts(cluster)
    assert set(hosts) == {"scheduler", *(f"worker-{index}" for index in range(WORKERS))}
    assert all(found == {"127.0.0.1"} for found in hosts.values()), hosts


@pytest.mark.slow
def test_tls_cluster_status_and_restart_with_other_files(cluster, tmp_path):
    result = CliRunner().invoke(dask_cli, ["status", "--directory", str(cluster.directory)])
    assert result.exit_code == 0 and result.output.count("worker tls://127.0.0.1:") == WORKERS, result.output
    other = make_tls_files(tmp_path)
    with pytest.raises(DaskClusterError, match=f"already runs at {cluster.address} without the TLS files"):
        ensure_local_cluster(WORKERS, gpus_per_worker=1, directory=cluster.directory, tls=other)
    assert ensure_local_cluster(WORKERS, gpus_per_worker=1, directory=cluster.directory, tls=cluster.tls) == cluster


@pytest.mark.slow
def test_clients_without_the_certificate_are_refused(cluster):
    host, port = host_and_port(cluster.address)
    started = time.monotonic()
    with pytest.raises(OSError):
        Client(f"tcp://{host}:{port}", timeout=3, set_as_default=False)
    with pytest.raises(OSError, match="certificate"):
        Client(cluster.address, timeout=3, security=Security.temporary(), set_as_default=False)
    assert time.monotonic() - started < 10

    assert answer_without_certificate(host, port, cluster.tls.ca_file) == b""


@pytest.mark.slow
def test_calcjob_runs_on_tls_cluster(bash_code):
    [node] = run_concurrently([(ShellJob, shell_job(bash_code, "echo hello > out.txt\n"))])

    assert node.exit_status == 0
    state = read_job_state(node.outputs.retrieved)
    assert state.worker.startswith("tls://127.0.0.1:")
    assert (Path(node.outputs.remote_folder.get_remote_path()) / "out.txt").read_text() == "hello\n"
