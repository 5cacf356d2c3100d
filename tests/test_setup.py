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


def test_verdi_run_works_on_a_profile_just_set_up(tmp_path):
    """aiida-core's ZeroMQ broker runs inside the daemon: the examples start it when it is missing (README's first
    command on a fresh machine)."""
    assert run_in(tmp_path, "tace-aiida", "setup").returncode == 0
    script = tmp_path / "add.py"
    script.write_text(
        "from aiida import orm\nfrom aiida.engine import calcfunction, run\n"
        "from tace_aiida.broker import ensure_broker\n\n"
        "started = ensure_broker()\n\n"
        "@calcfunction\ndef add(a, b):\n    return a + b\n\n"
        "print(started, run(add, a=orm.Int(1), b=orm.Int(2)).value, ensure_broker())\n")
    try:
        ran = run_in(tmp_path, "verdi", "run", str(script))
        assert ran.returncode == 0, ran.stderr
        assert ran.stdout.splitlines()[-1] == "True 3 False", "started once, then found running"
    finally:
        run_in(tmp_path, "verdi", "daemon", "stop")
