"""AiiDA profiles for tace-aiida: the embedded default, or PostgreSQL and RabbitMQ for production.

The embedded default needs no service: ``verdi presto --use-zeromq`` makes the profile (SQLite
storage in write-ahead-log mode, aiida-core's ZeroMQ broker). The production profile stores data
in PostgreSQL (``core.psql_dos``) and sends process messages through RabbitMQ (``core.rabbitmq``);
the database and its owner must exist (see the README). Both get a ``localhost`` computer, a
``localhost-dask`` computer whose jobs run on a dask cluster, and the codes ``tace-train``,
``tace-md`` and ``tace-label`` on both computers. Every step checks what exists first, so running
it again changes nothing. Passwords live only in AiiDA's configuration file, never in a node.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from aiida import load_profile, orm
from aiida.common.exceptions import NotExistent
from aiida.manage.configuration import create_profile, get_config, reset_config
from aiida.manage.configuration.profile import Profile

from .sqlite_storage import enable_write_ahead_log

DEFAULT_PROFILE = "tace"
LOCAL_COMPUTER = "localhost"
DASK_COMPUTER = "localhost-dask"
CODES = {"tace-train": "train a potential", "tace-md": "exploration MD", "tace-label": "label with an ASE calculator"}
STORAGE_BACKENDS = {"sqlite": "core.sqlite_dos", "postgresql": "core.psql_dos"}
BROKER_BACKENDS = {"zeromq": "core.zeromq", "rabbitmq": "core.rabbitmq"}


@dataclass(frozen=True)
class PostgresServer:
    """Where the production database is: an existing database ``name`` owned by ``user``."""

    host: str = "localhost"
    port: int = 5432
    name: str = "tace"
    user: str = "tace"
    password: str = ""

    def storage_config(self, repository: Path) -> dict:
        return {"database_engine": "postgresql_psycopg", "database_hostname": self.host, "database_port": self.port,
                "database_name": self.name, "database_username": self.user, "database_password": self.password,
                "repository_uri": repository.as_uri()}


@dataclass(frozen=True)
class RabbitmqServer:
    """Where the RabbitMQ broker is."""

    host: str = "127.0.0.1"
    port: int = 5672
    user: str = "guest"
    password: str = "guest"
    virtual_host: str = ""

    def broker_config(self) -> dict:
        return {"broker_protocol": "amqp", "broker_username": self.user, "broker_password": self.password,
                "broker_host": self.host, "broker_port": self.port, "broker_virtual_host": self.virtual_host}


def _create_embedded(name: str) -> None:
    verdi = Path(sys.executable).with_name("verdi")
    subprocess.run([str(verdi), "presto", "--profile-name", name, "--use-zeromq"], check=True)


def _create_with_services(name: str, storage: str, broker: str, postgres: PostgresServer,
                          rabbitmq: RabbitmqServer) -> None:
    config = get_config()
    storage_backend = STORAGE_BACKENDS[storage]
    repository = Path(config.dirpath) / "repository" / name
    storage_config = postgres.storage_config(repository) if storage == "postgresql" else {"filepath": str(repository)}
    broker_backend = BROKER_BACKENDS[broker]
    broker_config = rabbitmq.broker_config() if broker == "rabbitmq" else {}
    create_profile(config, name=name, email="tace-aiida@localhost", storage_backend=storage_backend,
                   storage_config=storage_config, broker_backend=broker_backend, broker_config=broker_config)
    config.store()
    print(f"Created new profile `{name}` ({storage_backend}, {broker_backend}).")


def _check_existing(profile: Profile, storage: str, broker: str) -> None:
    """Refuse to reuse a profile whose storage or broker differs from the one asked for."""
    wanted = (STORAGE_BACKENDS[storage], BROKER_BACKENDS[broker])
    found = (profile.storage_backend, profile.process_control_backend)
    if wanted != found:
        raise ValueError(f"profile {profile.name!r} exists with storage {found[0]} and broker {found[1]}, "
                         f"not {wanted[0]} and {wanted[1]}: choose another --profile name")


def ensure_profile(name: str = DEFAULT_PROFILE, storage: str = "sqlite", broker: str = "zeromq",
                   postgres: PostgresServer | None = None, rabbitmq: RabbitmqServer | None = None) -> Profile:
    """Create profile ``name`` unless it exists; load it and make it the default.

    ``storage`` is ``sqlite`` or ``postgresql``, ``broker`` is ``zeromq`` or ``rabbitmq``. An SQLite
    database is put in write-ahead-log mode (see :mod:`tace_aiida.sqlite_storage`).
    """
    if storage not in STORAGE_BACKENDS or broker not in BROKER_BACKENDS:
        raise ValueError(f"storage must be one of {sorted(STORAGE_BACKENDS)} and broker one of "
                         f"{sorted(BROKER_BACKENDS)}, not {storage!r} and {broker!r}")
    config = get_config(create=True)
    if name in config.profile_names:
        _check_existing(config.get_profile(name), storage, broker)
    elif (storage, broker) == ("sqlite", "zeromq"):
        _create_embedded(name)
        reset_config()
    else:
        _create_with_services(name, storage, broker, postgres or PostgresServer(), rabbitmq or RabbitmqServer())
    config = get_config()
    config.set_option("runner.poll.interval", 1, scope=name)
    config.set_default_profile(name, overwrite=True)
    config.store()
    profile = load_profile(name, allow_switch=True)
    enable_write_ahead_log(profile)
    return profile


def ensure_computer(label: str, scheduler: str, workdir: Path) -> orm.Computer:
    """The computer ``label`` (created on this machine with ``scheduler`` when missing)."""
    try:
        return orm.load_computer(label)
    except NotExistent:
        pass
    computer = orm.Computer(
        label=label,
        hostname="localhost",
        description=f"this machine, jobs run by {scheduler}",
        transport_type="core.local",
        scheduler_type=scheduler,
        workdir=str(workdir),
    ).store()
    computer.set_minimum_job_poll_interval(1.0)
    computer.set_default_mpiprocs_per_machine(1)
    computer.configure(safe_interval=0.0, use_login_shell=False)
    return computer


def ensure_code(label: str, computer: orm.Computer) -> orm.InstalledCode:
    """The code ``label@computer`` running the console script of the same name."""
    try:
        return orm.load_code(f"{label}@{computer.label}")
    except NotExistent:
        pass
    executable = shutil.which(label) or str(Path(sys.executable).with_name(label))
    if not Path(executable).exists():
        raise FileNotFoundError(f"console script {label} not found: is tace-aiida installed in this environment?")
    return orm.InstalledCode(
        label=label, computer=computer, filepath_executable=executable, description=CODES[label]
    ).store()


def setup(profile: str = DEFAULT_PROFILE, storage: str = "sqlite", broker: str = "zeromq",
          postgres: PostgresServer | None = None, rabbitmq: RabbitmqServer | None = None) -> dict[str, object]:
    """Profile, computers and codes; returns what is configured."""
    loaded = ensure_profile(profile, storage, broker, postgres, rabbitmq)
    scratch = Path(get_config().dirpath) / "scratch" / profile
    local = ensure_computer(LOCAL_COMPUTER, "core.direct", scratch)
    dask = ensure_computer(DASK_COMPUTER, "tace.dask", Path(local.get_workdir()).parent / "dask")
    codes = [ensure_code(label, computer) for computer in (local, dask) for label in CODES]
    return {"profile": profile, "storage": loaded.storage_backend, "broker": loaded.process_control_backend,
            "computers": [local.label, dask.label], "codes": [c.full_label for c in codes]}
