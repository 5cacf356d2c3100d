"""Dataset generation on the daemon: variants labelled on the dask workers, and a second run that labels nothing."""

from __future__ import annotations

import json

import pytest

from .conftest import ProductionProfile

pytestmark = [pytest.mark.slow, pytest.mark.production]


def generate(profile: ProductionProfile) -> dict:
    pk = int(profile.driver("submit-generation"))
    profile.driver("wait", str(pk), "600", timeout=660)
    return json.loads(profile.driver("generation-facts", str(pk)))


def test_generation_labels_once_and_reuses_its_labels_when_run_again(production_profile: ProductionProfile):
    first = generate(production_profile)
    assert first["exit_status"] == 0, first
    assert first["num_structures"] == first["labelled"] == len(first["hashes"]) >= 8 and first["reused"] == 0, first
    assert first["failed"] == 0 and first["energies_finite"]
    assert first["label_jobs"] == -(-first["labelled"] // 4), "jobs of 4 structures"
    again = generate(production_profile)
    assert again["exit_status"] == 0 and again["reused"] == first["num_structures"], again
    assert again["labelled"] == again["label_jobs"] == 0, "nothing labelled twice"
    assert again["hashes"] == first["hashes"]
