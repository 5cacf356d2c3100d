"""``tace-aiida setup``: the embedded default profile, computers and codes, created once."""

from __future__ import annotations

import os
import subprocess

import pytest

pytestmark = pytest.mark.slow


def run_in(aiida_path, *command: str) -> subprocess.CompletedProcess:
    environment = {**os.environ, "AIIDA_PATH": str(aiida_path)}
    return subprocess.run(command, capture_output=True, text=True, env=environment, timeout=300)


def test_setup_is_complete_and_idempotent(tmp_path):
    first = run_in(tmp_path, "tace-aiida", "setup", "--profile", "tace-test")
    assert first.returncode == 0, first.stderr
    assert "codes: tace-train@localhost" in first.stdout
    second = run_in(tmp_path, "tace-aiida", "setup", "--profile", "tace-test")
    assert second.returncode == 0, second.stderr
    assert second.stdout.splitlines() == first.stdout.splitlines()[-3:]
    assert "Created new profile" in first.stdout and "Created new profile" not in second.stdout

    status = run_in(tmp_path, "verdi", "-p", "tace-test", "status", "--no-rmq")
    assert "sqlite" in status.stdout.lower() or status.returncode == 0
    broker = run_in(tmp_path, "verdi", "-p", "tace-test", "profile", "show")
    assert "core.zeromq" in broker.stdout and "core.sqlite_dos" in broker.stdout
    codes = run_in(tmp_path, "verdi", "-p", "tace-test", "code", "list", "-a", "-r")
    for label in ("tace-train", "tace-md", "tace-label"):
        assert codes.stdout.count(f"{label}@") == 2, codes.stdout
    computers = run_in(tmp_path, "verdi", "-p", "tace-test", "computer", "list", "-a", "-r")
    assert sorted(word for word in computers.stdout.split() if word != "*") == ["localhost", "localhost-dask"]
