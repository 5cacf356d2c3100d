"""``tace-aiida``: set up the embedded default and manage the local dask cluster."""

from __future__ import annotations

import click

from .cli_dask import dask


@click.group()
def main() -> None:
    """tace-aiida: active learning of Cartesian-tensor potentials with AiiDA."""


@main.command()
@click.option("--profile", default="tace", show_default=True, help="Name of the AiiDA profile to create or reuse.")
def setup(profile: str) -> None:
    """Create (or check) the SQLite/ZeroMQ profile, the computers and the codes. Safe to run again."""
    from .profile import setup as run_setup

    configured = run_setup(profile)
    click.echo(f"profile: {configured['profile']}")
    click.echo(f"computers: {', '.join(configured['computers'])}")
    click.echo(f"codes: {', '.join(configured['codes'])}")


@main.command()
@click.argument("pk", type=int)
@click.option("--output", "-o", default="al_plots", show_default=True, help="Folder for the PNG files.")
def plot(pk: int, output: str) -> None:
    """Learning curve, uncertainty histograms and calibration plot of active-learning run PK."""
    from pathlib import Path

    from aiida import load_profile, orm

    from .plotting import plot_run

    load_profile()
    for path in plot_run(orm.load_node(pk), Path(output)):
        click.echo(str(path))


main.add_command(dask)
