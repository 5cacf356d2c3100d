"""``tace-aiida dask``: start, inspect and stop the local dask cluster that runs ``tace.dask`` jobs."""

from __future__ import annotations

from pathlib import Path

import click

from tace_aiida.dask_cluster import (
    DaskClusterError,
    LocalCluster,
    default_directory,
    detect_gpus,
    ensure_local_cluster,
    local_cluster_status,
    stop_local_cluster,
)

DIRECTORY_OPTION = click.option(
    "--directory",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Folder of the cluster's scheduler file, pids and logs [default: <AiiDA config folder>/tace-dask].",
)


@click.group("dask")
def dask() -> None:
    """Manage the local dask cluster that runs tace.dask jobs."""


@dask.command("start")
@click.option("--workers", "-n", type=click.IntRange(min=1), default=None, help="Workers [default: one per GPU block].")
@click.option("--gpus-per-worker", type=click.IntRange(min=0), default=1, show_default=True, help="GPUs per worker.")
@DIRECTORY_OPTION
def start(workers: int | None, gpus_per_worker: int, directory: Path | None) -> None:
    """Start a scheduler and workers on this machine, detached; do nothing if the cluster already runs."""
    if gpus_per_worker and not detect_gpus():
        click.echo(f"no GPU visible: the workers declare GPU={gpus_per_worker} as a label only")
    try:
        recorded = LocalCluster.load(directory or default_directory())
        if recorded is not None and recorded.scheduler.find() is not None:
            click.echo("already running, nothing started")
        cluster = ensure_local_cluster(n_workers=workers, gpus_per_worker=gpus_per_worker, directory=directory)
    except DaskClusterError as exception:
        raise click.ClickException(str(exception)) from exception
    click.echo(f"dask scheduler: {cluster.address}")
    click.echo(f"scheduler file: {cluster.scheduler_file}")
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
