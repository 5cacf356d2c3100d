"""A training whose dask scheduler dies and comes back continues from its last epoch.

The same training stopped at its wall time, or by its worker's death, runs on the daemon of both production
profiles: ``tests/production/test_training_faults.py``.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
from pathlib import Path

import pytest
from aiida import orm
from ase.io import read
from tace_aiida.workflows.train import TrainBaseWorkChain

from tace_aiida.calculations.train import RESTART_FILE, TrainCalculation
from tace_aiida.dask_cluster import ensure_local_cluster
from tace_aiida.data import TrainingSetData
from tace_aiida.schedulers.job_state import read_job_state
from tests.conftest import DATA
from tests.conftest_dask import WORKERS, run_concurrently

pytest_plugins = ["aiida.tools.pytest_fixtures", "tests.conftest_dask"]
pytestmark = pytest.mark.slow

#: Training ends by its time budget (seconds of training summed over the jobs), so that the test does not depend
#: on this machine's speed. With 24 s, one CI run's training ended normally in its first job (most likely on the
#: old worker, before starting the cluster again, slow on a loaded machine, stopped it).
BUDGET = 72.0
PARAMETERS = {"model": {"channels": 4, "radial_mlp": [8], "max_edge_rank": 1, "max_hidden_rank": 0, "correlation": 2},
              "max_epochs": 100_000, "patience": 100_000, "time_budget": BUDGET, "batch_size": 4,
              "valid_fraction": 0.25, "dtype": "float32", "device": "cpu", "lr": 0.005}


@pytest.fixture
def training_inputs(aiida_code_installed, dask_computer) -> dict:
    code = aiida_code_installed(computer=dask_computer, filepath_executable=shutil.which("tace-train"))
    frames = read(DATA / "3bpa_300K_40.xyz", index=":8")
    return {"train": {"code": code, "dataset": TrainingSetData(frames), "parameters": orm.Dict(PARAMETERS)},
            "max_iterations": orm.Int(25)}


def jobs_of(node: orm.WorkflowNode) -> list[orm.CalcJobNode]:
    return sorted((n for n in node.called if isinstance(n, orm.CalcJobNode)), key=lambda n: n.pk)


def assert_continued_to_the_end(node: orm.WorkflowNode, stopped_with: int) -> list[orm.CalcJobNode]:
    """Every job but the last stopped with ``stopped_with`` and left a restart file that the next job read; the
    final metrics hold every epoch exactly once, and the training ran for its time budget in total."""
    assert node.is_finished_ok, node.exit_message
    jobs = jobs_of(node)
    assert len(jobs) >= 2, "the training was never stopped"
    for stopped, following in zip(jobs, jobs[1:], strict=False):
        assert stopped.exit_status == stopped_with, stopped.exit_message
        assert following.inputs.restart.uuid == stopped.outputs.restart.uuid, "the next job continues the stopped one"
    assert jobs[-1].is_finished_ok
    metrics = node.outputs.metrics
    epochs = [entry["epoch"] for entry in metrics["epochs"]]
    assert epochs == list(range(len(epochs))), "every epoch once: nothing repeated, nothing skipped"
    assert 0 <= metrics["resumed_after_epoch"] < len(epochs) - 1, "the last job continued, then trained on"
    assert metrics["stop_reason"] == "time_budget" and BUDGET <= metrics["wall_seconds"] < 2 * BUDGET
    return jobs


async def first_epoch_done(process) -> orm.CalcJobNode:
    """The training job of ``process`` once it has written its first restart file."""
    while True:
        for job in jobs_of(process.node):
            workdir = job.get_remote_workdir()
            if workdir and (Path(workdir) / RESTART_FILE).is_file():
                return job
        await asyncio.sleep(0.1)


def test_a_training_survives_the_dask_scheduler_dying_and_coming_back(training_inputs, cluster):
    """The scheduler is killed; while it is down the job's state cannot be polled (AiiDA retries); the cluster is
    started again, which ends the old workers; the new scheduler does not know the job, so it is reported lost and
    the training continues from its restart file."""
    killed = {}

    async def kill_the_scheduler_then_start_the_cluster_again(processes) -> None:
        killed["job"] = (await first_epoch_done(processes[0])).pk
        os.kill(cluster.scheduler.pid, signal.SIGKILL)
        await asyncio.sleep(3)
        await asyncio.get_running_loop().run_in_executor(
            None, lambda: ensure_local_cluster(n_workers=WORKERS, gpus_per_worker=1, directory=cluster.directory))

    [node] = run_concurrently([(TrainBaseWorkChain, training_inputs)],
                              also=kill_the_scheduler_then_start_the_cluster_again, timeout=900)
    jobs = assert_continued_to_the_end(node, TrainCalculation.exit_codes.ERROR_JOB_LOST.status)
    assert jobs[0].pk == killed["job"] and len(jobs) == 2
    assert read_job_state(jobs[0].outputs.retrieved).lost, "the job the new scheduler did not know is marked lost"
