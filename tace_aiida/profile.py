"""The embedded default set-up: an SQLite AiiDA profile with the ZeroMQ broker, computers and codes.

Nothing here needs a service: ``verdi presto --use-zeromq`` makes the profile (SQLite storage,
aiida-core's ZeroMQ broker, a ``localhost`` computer); this module adds a ``localhost-dask``
computer whose jobs run on a dask cluster, and the codes ``tace-train``, ``tace-md`` and
``tace-label`` on both computers. Every step checks what exists first, so running it again changes
nothing.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

from aiida import load_profile, orm
from aiida.common.exceptions import NotExistent
from aiida.manage.configuration import get_config, reset_config

DEFAULT_PROFILE = "tace"
LOCAL_COMPUTER = "localhost"
DASK_COMPUTER = "localhost-dask"
CODES = {"tace-train": "train a potential", "tace-md": "exploration MD", "tace-label": "label with an ASE calculator"}


def ensure_profile(name: str = DEFAULT_PROFILE) -> None:
    """Create the profile with ``verdi presto`` unless it exists; load it and make it the default."""
    config = get_config(create=True)
    if name not in config.profile_names:
        verdi = Path(sys.executable).with_name("verdi")
        subprocess.run([str(verdi), "presto", "--profile-name", name, "--use-zeromq"], check=True)
        reset_config()
        config = get_config()
    config.set_option("runner.poll.interval", 1, scope=name)
    config.set_default_profile(name, overwrite=True)
    config.store()
    load_profile(name, allow_switch=True)


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


def setup(profile: str = DEFAULT_PROFILE) -> dict[str, object]:
    """Profile, computers and codes of the embedded default; returns what is configured."""
    ensure_profile(profile)
    local = orm.load_computer(LOCAL_COMPUTER)
    dask = ensure_computer(DASK_COMPUTER, "tace.dask", Path(local.get_workdir()).parent / "dask")
    codes = [ensure_code(label, computer) for computer in (local, dask) for label in CODES]
    return {"profile": profile, "computers": [local.label, dask.label], "codes": [c.full_label for c in codes]}
