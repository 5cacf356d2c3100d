"""The loop's settings: defaults, and every wrong type or range refused with the key and value named."""

from __future__ import annotations

import pytest
from tace_aiida.workflows.settings import StageSettings, StoppingSettings, read_stages


def test_defaults_and_numbers_read_as_floats():
    stage = StageSettings.from_dict({"temperatures": [300, 600], "timestep": 2})
    assert stage.temperatures == [300, 600] and stage.timestep == 2.0 and isinstance(stage.timestep, float)
    assert stage.steps == 1000 and stage.dataset_starts == 4 and stage.stop_factor == 2.0
    assert StoppingSettings.from_dict({}).to_dict() == {
        "accurate_fraction": 0.9, "converged_iterations": 1, "max_iterations": 10,
        "max_label_failure_fraction": 0.2, "min_members": 2}


@pytest.mark.parametrize(("stage", "message"), [
    ({"temperatures": [-300]}, "temperatures must be a non-empty list of positive temperatures (K), not [-300]"),
    ({"temperatures": []}, "temperatures must be a non-empty list"),
    ({"temperatures": 300}, "temperatures must be list[float], not int 300"),
    ({"temperatures": ["hot"]}, "temperatures must be a list of numbers, not ['hot']"),
    ({"steps": 0}, "steps must be >= 1, not 0"),
    ({"steps": "ten"}, "steps must be int, not str 'ten'"),
    ({"steps": 10.5}, "steps must be int, not float 10.5"),
    ({"steps": True}, "steps must be int, not the boolean True"),
    ({"timestep": 0}, "timestep must be > 0 fs, not 0.0"),
    ({"steps": 10, "save_interval": 20}, "save_interval must be between 1 and steps (10), not 20"),
    ({"start_from": "somewhere"}, "start_from must be 'initial' or 'dataset', not 'somewhere'"),
    ({"thermostat": "berendsen"}, "thermostat must be langevin or bussi, not 'berendsen'"),
    ({"max_force_std": -1}, "max_force_std must be > 0 eV/Å, not -1.0"),
    ({"temperature": 300}, "unknown settings ['temperature']"),
])
def test_bad_stage_is_refused_naming_stage_key_and_value(stage, message):
    with pytest.raises((TypeError, ValueError), match="^exploration stage 1: ") as error:
        read_stages([{}, stage])
    assert message in str(error.value)


def test_no_stage_is_refused():
    with pytest.raises(ValueError, match="at least one stage"):
        read_stages([])


@pytest.mark.parametrize(("stopping", "message"), [
    ({"max_label_failure_fraction": 1.0}, "max_label_failure_fraction must be in [0, 1)"),
    ({"max_label_failure_fraction": -0.1}, "max_label_failure_fraction must be in [0, 1)"),
    ({"accurate_fraction": 1.5}, "accurate_fraction must be in [0, 1], not 1.5"),
    ({"max_iterations": 0}, "max_iterations must be >= 1, not 0"),
    ({"min_members": 0}, "min_members must be >= 1, not 0"),
    ({"max_iterations": "ten"}, "max_iterations must be int, not str 'ten'"),
    ({"patience": 3}, "unknown settings ['patience']"),
])
def test_bad_stopping_is_refused(stopping, message):
    with pytest.raises((TypeError, ValueError), match="^StoppingSettings: ") as error:
        StoppingSettings.from_dict(stopping)
    assert message in str(error.value)
