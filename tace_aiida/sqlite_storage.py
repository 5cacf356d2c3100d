"""Make the embedded SQLite profile safe for a running loop with readers beside it.

``verdi presto`` leaves the SQLite database in rollback-journal mode: a reader (``verdi process
list``, a QueryBuilder script) holds a shared lock for as long as its query is open, and a writer
that waits longer than SQLite's busy timeout (5 s) fails its commit with ``database is locked``.
In write-ahead-log (WAL) mode readers and the writer do not block each other; the mode is stored
in the database file, so setting it once holds for every process that opens the profile.

aiida-core rolls its session back after an ``IntegrityError`` only: any other failed commit (a
lock held by another writer past the timeout) leaves the session waiting for a rollback that
never comes, and every later database call of that process raises ``PendingRollbackError``.
:func:`install_session_recovery` rolls the session back on every failed commit, so the failure
stays one error in one step (the process reports it) instead of wedging the runner.
"""

from __future__ import annotations

import functools
import sqlite3
from pathlib import Path

from aiida.manage.configuration.profile import Profile

SQLITE_STORAGE = "core.sqlite_dos"


def database_path(profile: Profile) -> Path | None:
    """The SQLite database file of ``profile``, or None when its storage is not ``core.sqlite_dos``."""
    if profile.storage_backend != SQLITE_STORAGE:
        return None
    from aiida.storage.sqlite_dos.backend import FILENAME_DATABASE

    return Path(profile.storage_config["filepath"]) / FILENAME_DATABASE


def journal_mode(path: Path) -> str:
    """The journal mode of the SQLite database at ``path`` (``delete``, ``wal``, ...)."""
    with sqlite3.connect(path) as connection:
        return connection.execute("PRAGMA journal_mode").fetchone()[0]


def enable_write_ahead_log(profile: Profile) -> str | None:
    """Switch ``profile``'s SQLite database to WAL mode (kept in the file); returns the mode, None if not SQLite.

    :raises RuntimeError: if SQLite refused the switch (another process holds the database open in a transaction).
    """
    path = database_path(profile)
    if path is None:
        return None
    connection = sqlite3.connect(path, timeout=30)
    try:
        mode = connection.execute("PRAGMA journal_mode=WAL").fetchone()[0]
    finally:
        connection.close()
    if mode != "wal":
        raise RuntimeError(f"SQLite database {path} stayed in journal mode {mode!r}; stop the processes using it and retry")
    return mode


def install_session_recovery() -> None:
    """Roll aiida-core's session back whenever storing a model fails, not only on an IntegrityError.

    Idempotent; called when the workflows are imported, so daemon workers running them have it.
    """
    from aiida.storage.psql_dos.orm.utils import ModelWrapper

    if getattr(ModelWrapper.save, "_tace_recovers_session", False):
        return
    save = ModelWrapper.save

    @functools.wraps(save)
    def save_or_roll_back(self) -> None:
        committing = not self._in_transaction()  # inside a transaction, its context manager rolls back
        try:
            save(self)
        except Exception:
            if committing:
                self.session.rollback()
            raise

    save_or_roll_back._tace_recovers_session = True  # type: ignore[attr-defined]
    ModelWrapper.save = save_or_roll_back
