"""Labelling throughput with two daemon workers and two dask workers: 500 EMT structures, none lost."""

from __future__ import annotations

import json

import pytest

from .conftest import ProductionProfile

pytestmark = [pytest.mark.slow, pytest.mark.production]

STRUCTURES = 500


def test_500_structures_are_labelled_with_none_lost(production_profile: ProductionProfile):
    pk = int(production_profile.driver("submit-labelling", str(STRUCTURES)))
    production_profile.driver("wait", str(pk), "900", timeout=960)
    facts = json.loads(production_profile.driver("labelling-facts", str(pk)))
    per_minute = STRUCTURES / facts["wall_seconds"] * 60
    overhead = (facts["wall_seconds"] - facts["labeller_seconds"]) / STRUCTURES
    print(f"\n{production_profile.backend}: {STRUCTURES} structures in {facts['jobs']} jobs, "
          f"{facts['wall_seconds']:.1f} s: {per_minute:.0f} structures/min; labeller busy {facts['labeller_seconds']:.1f} s "
          f"(EMT itself {facts['labeller_compute_seconds']:.1f} s); orchestration {overhead * 1000:.0f} ms/structure")
    assert facts["exit_status"] == 0, facts
    assert facts["missing_or_repeated"] == [], "every structure labelled or listed as failed, exactly once"
    assert facts["labelled"] == STRUCTURES and facts["failed"] == 0, facts
    assert facts["jobs"] == STRUCTURES // 50
