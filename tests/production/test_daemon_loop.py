"""The active-learning loop on a daemon: killed in every step of the outline, and with readers beside it."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from .conftest import ProductionProfile

pytestmark = [pytest.mark.slow, pytest.mark.production]

EXAMPLES = Path(__file__).parents[2] / "examples"
#: Where the daemon is killed: the first moment a child with this link-label prefix is active.
#: Between two of these the outline runs every one of its steps once, on a context just restored
#: from the checkpoint (collect_initial ... train_ensemble, inspect_ensemble + explore,
#: inspect_exploration ... label_selection, merge_selection ... train_ensemble, ..., finalize).
KILL_POINTS = ["label_initial", "iteration_01_train", "iteration_01_md", "iteration_01_label",
               "iteration_02_train", "iteration_02_md", "iteration_02_label"]
RUN_TIMEOUT = 1200.0


def follow(profile: ProductionProfile, kill_points: list[str], timeout: float = RUN_TIMEOUT) -> tuple[int, list[dict]]:
    """Submit the test loop and watch it until it ends; at each kill point SIGKILL the daemon's workers and
    restart the daemon. The watcher submits the run itself, so that it sees even the first step.

    Returns the run's PK and one record per kill: the point, the active children then, the pids killed,
    what ``verdi process repair`` revived, the seconds taken. A run that ends before every kill point
    was reached fails here, with its state and report.
    """
    watcher = profile.driver_process("submit-and-watch")
    pending, kills, started, pk = list(kill_points), [], time.monotonic(), None
    try:
        for line in watcher.stdout:
            event = json.loads(line)
            if "pk" in event:
                pk = event["pk"]
                continue
            if event["done"]:
                if pending:
                    report = profile.verdi("process", "report", str(pk), check=False)
                    raise AssertionError(
                        f"run {pk} ended ({event}) before the kill points {pending}; killed at "
                        f"{[kill['point'] for kill in kills]}. Its report:\n{report.stdout}{report.stderr}")
                return pk, kills
            if time.monotonic() - started > timeout:
                raise AssertionError(f"run {pk} did not end within {timeout} s")
            hit = next((point for point in pending
                        if any(label.startswith(point) for label in event["active"])), None)
            if hit is None:
                continue
            pending.remove(hit)
            moment = time.monotonic()
            pids, repaired = profile.kill_workers_and_restart()
            kills.append({"point": hit, "active": event["active"], "killed": pids, "repair": repaired,
                          "at_seconds": round(moment - started, 1), "restart_seconds": round(time.monotonic() - moment, 1)})
        raise AssertionError(f"the watcher of run {pk} stopped: {watcher.stderr.read()}")
    finally:
        watcher.kill()
        watcher.wait()


def assert_complete_run(facts: dict) -> None:
    """Exit 0 after two converged stages; every selected frame in the dataset once, each labelled by a finished process."""
    assert facts["exit_status"] == 0, facts
    assert facts["stop_reason"] == "converged" and facts["iterations"] == 2, facts
    assert facts["selected"] == [3, 3]
    assert facts["initial_frames"] == 2
    assert facts["frames"] == 2 + 3 + 3, "no frame lost, none merged twice"
    selected = [tuple(frame) for frame in facts["selected_frames"]]
    assert len(selected) == len(set(selected)) == 6, "no MD frame labelled twice"
    assert facts["label_processes_finished_ok"] and all(facts["label_processes_finished_ok"].values()), facts
    assert facts["unterminated_descendants"] == [], "no process of the run is left behind"
    assert facts["finished_calcjobs"] == {"tace.label_ase": 3, "tace.train": 4, "tace.md": 4}, \
        "labelling, training and MD ran once each (initial + 2 selections, 2 members x 2 iterations, 2 starts x 2)"


def test_loop_survives_the_daemon_killed_in_every_step(production_profile: ProductionProfile):
    pk, kills = follow(production_profile, KILL_POINTS)
    print(f"\n{production_profile.backend}: run {pk}, daemon workers killed {len(kills)} times:")
    for kill in kills:
        print(f"  {kill['at_seconds']:>7} s  {kill['point']:<20} active {kill['active']}  "
              f"restarted in {kill['restart_seconds']} s; repair: {kill['repair']}")
    points = [kill["point"] for kill in kills]
    assert points == KILL_POINTS, f"the daemon was killed at {points}, not in every step {KILL_POINTS}"
    facts = production_profile.facts(pk)
    # A kill may land after a calcfunction stored an output but before it was sealed: it is excepted
    # all the same, and its step runs again; what matters is that nothing uses what it left behind.
    # A kill may also land after a step stored a child but before the child's first checkpoint: when
    # `verdi process repair` sends it, a worker excepts it without running it, and the step submits another.
    interrupted = [entry for entry in facts["excepted_descendants"]
                   if (entry["class"] == "CalcFunctionNode" or entry["never_ran"]) and entry["outputs_used"] == 0]
    assert facts["excepted_descendants"] == interrupted, (
        "the only excepted processes may be calcfunctions killed mid-way, which `verdi process repair` cannot "
        "continue (their step ran again), or children that never ran for want of a checkpoint, and none of their "
        f"outputs may be used: {facts['excepted_descendants']}")
    assert_complete_run(facts)


def test_loop_finishes_with_readers_beside_it(production_profile: ProductionProfile):
    pk = int(production_profile.driver("submit-loop"))
    readers = [production_profile.driver_process("read-slowly", "60") for _ in range(2)]
    process_list = []
    try:
        follow_started = time.monotonic()
        watcher = production_profile.driver_process("watch", str(pk))
        while watcher.poll() is None:
            if time.monotonic() - follow_started > RUN_TIMEOUT:
                raise AssertionError(f"run {pk} did not end within {RUN_TIMEOUT} s")
            process_list.append(production_profile.verdi("process", "list", "-a", check=False).returncode)
            time.sleep(1)
        assert watcher.returncode == 0, watcher.stderr.read()
    finally:
        for reader in readers:
            reader.wait(timeout=120)
    for reader in readers:
        assert reader.returncode == 0, reader.stderr.read()
    assert process_list and set(process_list) == {0}, "`verdi process list` failed beside the run"
    facts = production_profile.facts(pk)
    assert facts["excepted_descendants"] == [], facts
    assert_complete_run(facts)


def test_password_stays_out_of_the_provenance_graph(production_profile: ProductionProfile):
    if production_profile.backend != "postgresql":
        pytest.skip("only the PostgreSQL profile has a password")
    password = production_profile.environment["TACE_DB_PASSWORD"]
    found = json.loads(production_profile.driver("find-text", password))
    if found["searched_nodes"] <= 50:  # the loops of the tests before this one did not run: run one
        follow(production_profile, [])
        found = json.loads(production_profile.driver("find-text", password))
    assert found["searched_nodes"] > 50 and found["searched_files"] > 20, found
    assert found["places"] == [], f"the database password is stored in {found['places']}"


def test_examples_submit_to_the_daemon(production_profile: ProductionProfile):
    for example in ("active_learning_cu_emt.py",):
        output = production_profile.verdi("run", str(EXAMPLES / example), "--submit").stdout
        assert "submitted" in output and "verdi process report" in output, output
        pk = int(output.split("<")[1].split(">")[0])
        production_profile.verdi("process", "kill", str(pk), "--timeout", "120")
        production_profile.driver("wait", str(pk), "120")
        assert f"{pk}" in production_profile.verdi("process", "list", "-a", "-S", "killed").stdout


@pytest.mark.parametrize("force", [False, True], ids=["kill", "kill-F"])
def test_killing_the_loop_ends_every_job_it_started(production_profile: ProductionProfile, force: bool):
    """`verdi process kill` of the loop while a member trains on dask: every process below it ends, every dask job is
    done, and no process runs on in a job folder (aiida-core alone leaves the jobs running with -F)."""
    pk = int(production_profile.driver("submit-loop", "100000"))  # members that train until they are stopped
    running = json.loads(production_profile.driver("wait-for-job", str(pk), "300", timeout=360))
    production_profile.verdi("process", "kill", *(["-F"] if force else []), str(pk), "--timeout", "120")
    deadline = time.monotonic() + 120
    while True:
        facts = json.loads(production_profile.driver("job-facts", str(pk)))
        ended = facts["state"] == "killed" and not facts["unterminated"] and all(
            job["status"] == "done" and not job["alive"] for job in facts["jobs"])
        if ended or time.monotonic() > deadline:
            break
        time.sleep(2)
    assert ended, f"120 s after the kill, with the job folders {running} running before it: {facts}"
    assert any(job["ending"] == "cancelled" for job in facts["jobs"]), "the running job was stopped, not run to its end"
