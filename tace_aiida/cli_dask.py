"""``tace-aiida dask``: start, inspect and stop the local dask cluster that runs ``tace.dask`` jobs."""

from __future__ import annotations

from pathlib import Path

import click

from tace_aiida.dask_cluster import (
    DaskClusterError,
    LocalCluster,
    TlsFiles,
    default_directory,
    detect_gpus,
    ensure_local_cluster,
    local_cluster_status,
    make_tls_files,
    stop_local_cluster,
)

DIRECTORY_OPTION = click.option(
    "--directory",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Folder of the cluster's scheduler file, pids and logs [default: <AiiDA config folder>/tace-dask].",
)


TLS_FILE = click.Path(dir_okay=False, exists=True, path_type=Path)


def tls_files(
    make: bool, directory: Path, ca_file: Path | None, cert: Path | None, key: Path | None
) -> TlsFiles | None:
    """Return the TLS files the options ask for: made in ``directory`` with ``--tls``, or the three given files."""
    given = {"--tls-ca-file": ca_file, "--tls-cert": cert, "--tls-key": key}
    missing = [name for name, path in given.items() if path is None]
    if make and len(missing) < len(given):
        raise click.UsageError("give either --tls or the files --tls-ca-file, --tls-cert and --tls-key, not both")
    if make:
        return make_tls_files(directory)
    if missing and len(missing) < len(given):
        raise click.UsageError(f"TLS needs --tls-ca-file, --tls-cert and --tls-key; missing: {', '.join(missing)}")
    return None if missing else TlsFiles(ca_file, cert, key)  # type: ignore[arg-type]


@click.group("dask")
def dask() -> None:
    """Manage the local dask cluster that runs tace.dask jobs."""


@dask.command("start")
@click.option("--workers", "-n", type=click.IntRange(min=1), default=None, help="Workers [default: one per GPU block].")
@click.option("--gpus-per-worker", type=click.IntRange(min=0), default=1, show_default=True, help="GPUs per worker.")
@DIRECTORY_OPTION
@click.option("--tls", "make_tls", is_flag=True, help="Serve TLS with a CA and certificate made in <directory>/tls.")
@click.option("--tls-ca-file", type=TLS_FILE, default=None, help="Serve TLS: CA certificate (PEM) of the peers.")
@click.option("--tls-cert", type=TLS_FILE, default=None, help="Serve TLS: certificate (PEM) of all processes.")
@click.option("--tls-key", type=TLS_FILE, default=None, help="Serve TLS: private key (PEM) of the certificate.")
def start(
    workers: int | None,
    gpus_per_worker: int,
    directory: Path | None,
    make_tls: bool,
    tls_ca_file: Path | None,
    tls_cert: Path | None,
    tls_key: Path | None,
) -> None:
    """Start a scheduler and workers on this machine, on 127.0.0.1 and detached; do nothing if the cluster already
    runs. With TLS, only peers presenting a certificate signed by the CA may connect."""
    if gpus_per_worker and not detect_gpus():
        click.echo(f"no GPU visible: the workers declare GPU={gpus_per_worker} as a label only")
    directory = directory or default_directory()
    try:
        recorded = LocalCluster.load(directory)
        if recorded is not None and recorded.scheduler.find() is not None:
            click.echo("already running, nothing started")
        tls = tls_files(make_tls, directory, tls_ca_file, tls_cert, tls_key)
        cluster = ensure_local_cluster(n_workers=workers, gpus_per_worker=gpus_per_worker, directory=directory, tls=tls)
    except DaskClusterError as exception:
        raise click.ClickException(str(exception)) from exception
    click.echo(f"dask scheduler: {cluster.address}")
    click.echo(f"scheduler file: {cluster.scheduler_file}")
    if cluster.tls is not None:
        click.echo(f"TLS: CA {cluster.tls.ca_file}, certificate {cluster.tls.cert}, key {cluster.tls.key}")
    for process in cluster.processes:
        devices = (
            "" if process.cuda_visible_devices is None else f" CUDA_VISIBLE_DEVICES={process.cuda_visible_devices}"
        )
        click.echo(f"{process.name}: pid {process.pid}{devices}")


@dask.command("status")
@DIRECTORY_OPTION
def status(directory: Path | None) -> None:
    """Show the local cluster's processes and the workers connected to its scheduler."""
    try:
        report = local_cluster_status(directory)
    except DaskClusterError as exception:
        raise click.ClickException(str(exception)) from exception
    if report is None:
        click.echo(f"no local dask cluster recorded in {directory or default_directory()}")
        return
    click.echo(f"dask scheduler: {report.cluster.address}")
    for process in report.cluster.processes:
        click.echo(f"{process.name}: pid {process.pid} {'running' if report.alive[process.name] else 'not running'}")
    if report.error is not None:
        click.echo(report.error)
    for address, resources in sorted(report.workers.items()):
        declared = ", ".join(f"{name}={value:g}" for name, value in sorted(resources.items())) or "no resources"
        click.echo(f"worker {address}: {declared}")


@dask.command("stop")
@DIRECTORY_OPTION
def stop(directory: Path | None) -> None:
    """Stop the local cluster; its running jobs are killed, and reported lost once a cluster runs again."""
    try:
        cluster = stop_local_cluster(directory)
    except DaskClusterError as exception:
        raise click.ClickException(str(exception)) from exception
    if cluster is None:
        click.echo(f"no local dask cluster recorded in {directory or default_directory()}")
    else:
        click.echo(f"stopped the dask cluster at {cluster.address}")
