"""A member's training on the daemon, stopped for real: at its wall time, and by its dask worker's death."""

from __future__ import annotations

import json

import pytest

from .conftest import ProductionProfile

pytestmark = [pytest.mark.slow, pytest.mark.production]

BUDGET, WALLTIME = 24.0, 18  # seconds of training in all, and of wall time per job


def finished_in_continued_jobs(profile: ProductionProfile, pk: int, stopped_with: int) -> dict:
    profile.driver("wait", str(pk), "600", timeout=660)
    facts = json.loads(profile.driver("training-facts", str(pk)))
    assert facts["exit_status"] == 0, facts
    jobs = facts["jobs"]
    assert len(jobs) >= 2 and all(job["exit_status"] == stopped_with for job in jobs[:-1]), facts
    assert all(following["continues"] == stopped["restart"] is not None
               for stopped, following in zip(jobs, jobs[1:], strict=False)), "each job continues the stopped one"
    assert facts["epochs"] == list(range(len(facts["epochs"]))), "every epoch once"
    assert facts["resumed_after_epoch"] >= 0 and facts["stop_reason"] == "time_budget"
    assert BUDGET <= facts["wall_seconds"] < 2 * BUDGET, "trained for its budget in all, across the jobs"
    return facts


def test_a_training_at_its_wall_time_continues_in_the_next_job(production_profile: ProductionProfile):
    pk = int(production_profile.driver("submit-training", str(BUDGET), str(WALLTIME)))
    facts = finished_in_continued_jobs(production_profile, pk, stopped_with=420)
    print(f"\n{production_profile.backend}: {len(facts['epochs'])} epochs in {len(facts['jobs'])} jobs")


def test_a_training_whose_dask_worker_dies_continues(production_profile: ProductionProfile):
    pk = int(production_profile.driver("submit-training", str(BUDGET), "0"))  # only the worker's death stops it
    killed = json.loads(production_profile.driver("kill-worker-of", str(pk), timeout=360))
    facts = finished_in_continued_jobs(production_profile, pk, stopped_with=400)
    assert [job["pk"] for job in facts["jobs"]][0] == killed["job"] and len(facts["jobs"]) == 2
