"""``tace-aiida``: set up the embedded default and manage the local dask cluster."""

from __future__ import annotations

import click

from .cli_dask import dask
from .cli_learn import learn
from .generation.cli import generate


@click.group()
def main() -> None:
    """tace-aiida: active learning of Cartesian-tensor potentials with AiiDA."""


@main.command()
@click.option("--profile", default="tace", show_default=True, help="Name of the AiiDA profile to create or reuse.")
@click.option("--storage", type=click.Choice(["sqlite", "postgresql"]), default="sqlite", show_default=True,
              help="sqlite: embedded, no service. postgresql: an existing PostgreSQL database (--db-* options).")
@click.option("--broker", type=click.Choice(["zeromq", "rabbitmq"]), default="zeromq", show_default=True,
              help="zeromq: aiida-core's embedded broker. rabbitmq: a RabbitMQ server (--broker-* options).")
@click.option("--db-host", default="localhost", show_default=True, help="PostgreSQL host.")
@click.option("--db-port", default=5432, show_default=True, help="PostgreSQL port.")
@click.option("--db-name", default="tace", show_default=True, help="PostgreSQL database (must exist).")
@click.option("--db-user", default="tace", show_default=True, help="PostgreSQL user owning the database.")
@click.option("--db-password", envvar="TACE_DB_PASSWORD", default="", show_default=False,
              help="PostgreSQL password (or the TACE_DB_PASSWORD environment variable, which keeps it out of `ps`).")
@click.option("--broker-host", default="127.0.0.1", show_default=True, help="RabbitMQ host.")
@click.option("--broker-port", default=5672, show_default=True, help="RabbitMQ port.")
@click.option("--broker-user", default="guest", show_default=True, help="RabbitMQ user.")
@click.option("--broker-password", envvar="TACE_BROKER_PASSWORD", default="guest", show_default=False,
              help="RabbitMQ password (or the TACE_BROKER_PASSWORD environment variable).")
@click.option("--broker-vhost", default="", show_default=True, help="RabbitMQ virtual host.")
def setup(profile: str, storage: str, broker: str, db_host: str, db_port: int, db_name: str, db_user: str,
          db_password: str, broker_host: str, broker_port: int, broker_user: str, broker_password: str,
          broker_vhost: str) -> None:
    """Create (or check) the profile, the computers and the codes. Safe to run again.

    With no option: the embedded default (SQLite and ZeroMQ, no service needed). For production:
    --storage postgresql --broker rabbitmq with the servers' addresses.
    """
    from .profile import PostgresServer, RabbitmqServer
    from .profile import setup as run_setup

    postgres = PostgresServer(db_host, db_port, db_name, db_user, db_password)
    rabbitmq = RabbitmqServer(broker_host, broker_port, broker_user, broker_password, broker_vhost)
    try:
        configured = run_setup(profile, storage, broker, postgres, rabbitmq)
    except (ValueError, ConnectionError, FileNotFoundError) as error:
        raise click.ClickException(str(error)) from error
    click.echo(f"profile: {configured['profile']} ({configured['storage']}, {configured['broker']})")
    click.echo(f"computers: {', '.join(configured['computers'])}")
    click.echo(f"codes: {', '.join(configured['codes'])}")


def run_with_report(pk: int):
    """The ended active-learning run ``pk`` that has a ``report``; a ``ClickException`` says what else it is (not a
    loop, not ended, or killed before its report, with the command that continues it)."""
    from .cli_learn import ended_run
    from .run_summary import ended_without_report

    try:
        node = ended_run(str(pk), "PK")
    except ValueError as error:
        raise click.ClickException(str(error)) from error
    if "report" not in node.outputs:
        raise click.ClickException(ended_without_report(node))
    return node


@main.command()
@click.argument("pk", type=int)
@click.option("--output", "-o", default="al_plots", show_default=True, help="Folder for the PNG files.")
def plot(pk: int, output: str) -> None:
    """Learning curve, uncertainty histograms and calibration plot of active-learning run PK."""
    from pathlib import Path

    from aiida import load_profile

    from .plotting import plot_run

    load_profile()
    node = run_with_report(pk)
    for path in plot_run(node, Path(output)):
        click.echo(str(path))


@main.command()
@click.argument("pk", type=int)
@click.option("--output", "-o", default=None, help="Also write the final ensemble and the plots into this folder.")
def summary(pk: int, output: str | None) -> None:
    """How active-learning run PK ended, one line per iteration (what the examples print after a run)."""
    from pathlib import Path

    from aiida import load_profile

    from .run_summary import export_run, summarise

    load_profile()
    node = run_with_report(pk)
    click.echo("\n".join(summarise(node)))
    for path in export_run(node, Path(output)) if output else []:
        click.echo(f"written: {path}")


main.add_command(dask)
main.add_command(generate)
main.add_command(learn)
