"""The loop's settings: defaults, and every wrong type or range refused with the key and value named."""

from __future__ import annotations

import pytest
from tace_aiida.workflows.exploration import md_parameters, plan_md_runs, stop_threshold
from tace_aiida.workflows.settings import StageSettings, StoppingSettings, read_stages


def test_defaults_and_numbers_read_as_floats():
    stage = StageSettings.from_dict({"temperatures": [300, 600], "timestep": 2})
    assert stage.temperatures == [300, 600] and stage.timestep == 2.0 and isinstance(stage.timestep, float)
    assert stage.steps == 1000 and stage.dataset_starts == 4 and stage.stop_factor == 2.0
    assert StoppingSettings.from_dict({}).to_dict() == {
        "accurate_fraction": 0.9, "converged_iterations": 1, "max_iterations": 10,
        "max_label_failure_fraction": 0.2, "min_members": 2, "lower_bound_tolerance": None}


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
    ({"lower_bound_tolerance": -0.01}, "lower_bound_tolerance must be >= 0, not -0.01"),
    ({"max_iterations": "ten"}, "max_iterations must be int, not str 'ten'"),
    ({"patience": 3}, "unknown settings ['patience']"),
])
def test_bad_stopping_is_refused(stopping, message):
    with pytest.raises((TypeError, ValueError), match="^StoppingSettings: ") as error:
        StoppingSettings.from_dict(stopping)
    assert message in str(error.value)


def test_md_runs_are_planned_per_start_temperature_and_run_in_launch_order():
    stage = StageSettings.from_dict({"temperatures": [300, 600], "runs": 2, "max_starts": 3})
    runs = plan_md_runs([f"s{i}" for i in range(5)], stage)
    assert runs[:4] == [["s0", 300.0, 0], ["s0", 300.0, 1], ["s0", 600.0, 0], ["s0", 600.0, 1]]
    assert [run[0] for run in runs[::4]] == ["s0", "s2", "s4"], "max_starts keeps 3 starts spread over the 5"
    assert len(plan_md_runs(["b", "a"], StageSettings())) == 2


def test_md_parameters_nvt_npt_seed_and_stop_threshold():
    stage = StageSettings.from_dict({"temperatures": [500], "steps": 20, "timestep": 2, "save_interval": 4})
    parameters = md_parameters(stage, 500.0, run=1, iteration=3, max_force_std=0.6)
    assert parameters == {"ensemble": "nvt", "thermostat": "langevin", "temperature": 500.0, "pressure": 0.0,
                          "timestep": 2.0, "steps": 20, "save_interval": 4, "max_force_std": 0.6, "seed": 3001}
    assert md_parameters(StageSettings.from_dict({"pressure": 1.5}), 300.0, 0, 1, 0.6)["ensemble"] == "npt"
    assert stop_threshold(stage, trust_high=0.3) == 0.6, "stop_factor (2) times trust_high (eV/Å)"
    assert stop_threshold(StageSettings.from_dict({"max_force_std": 0.5}), trust_high=0.3) == 0.5


def test_a_single_model_uncertainty_reaches_the_md_parameters_and_is_validated():
    from tace_aiida.model.md import MDSettings

    from tace_aiida.selection import SelectionSettings

    assert SelectionSettings.from_dict({}).uncertainty == "ensemble"
    assert SelectionSettings.from_dict({"uncertainty": "features"}).uncertainty == "features"
    with pytest.raises(ValueError, match="uncertainty.*'dropout'"):
        SelectionSettings.from_dict({"uncertainty": "dropout"})
    stage = StageSettings()
    assert "uncertainty" not in md_parameters(stage, 300.0, 0, 1, 0.6), "the default leaves earlier parameters unchanged"
    parameters = md_parameters(stage, 300.0, 0, 1, 0.6, uncertainty="features")
    assert parameters["uncertainty"] == "features"
    assert MDSettings.from_dict({**parameters, "checkpoints": ["m.pt"]}).uncertainty == "features"


def test_a_stage_driven_by_its_first_member_reaches_the_md_parameters_and_is_validated():
    from tace_aiida.model.md import MDSettings

    assert "driven_by" not in md_parameters(StageSettings(), 300.0, 0, 1, 0.6), "the default leaves earlier parameters"
    stage = StageSettings.from_dict({"driven_by": "first_member"}, owner="exploration stage 1")
    parameters = md_parameters(stage, 300.0, 0, 1, 0.6)
    assert MDSettings.from_dict({**parameters, "checkpoints": ["m.pt"]}).driven_by == "first_member"
    with pytest.raises(ValueError, match="exploration stage 1: driven_by must be mean or first_member, not 'last'"):
        StageSettings.from_dict({"driven_by": "last"}, owner="exploration stage 1")
    with pytest.raises(ValueError, match=r"driven_by must be 'mean' when bias_strength is set \(0.5 eV\)"):
        StageSettings.from_dict({"driven_by": "first_member", "bias_strength": 0.5}, owner="exploration stage 1")


def test_a_compiled_driver_reaches_the_md_parameters_and_needs_the_first_member():
    from tace_aiida.model.md import MDSettings

    assert "compile_driver" not in md_parameters(StageSettings(), 300.0, 0, 1, 0.6), "the default leaves earlier parameters"
    stage = StageSettings.from_dict({"driven_by": "first_member", "compile_driver": True}, owner="exploration stage 1")
    parameters = md_parameters(stage, 300.0, 0, 1, 0.6)
    assert MDSettings.from_dict({**parameters, "checkpoints": ["m.pt"]}).compile_driver is True
    with pytest.raises(ValueError, match=r"exploration stage 1: compile_driver must be false unless driven_by is "
                                         r"'first_member' \(not 'mean'\), not True"):
        StageSettings.from_dict({"compile_driver": True}, owner="exploration stage 1")
    with pytest.raises(ValueError, match="compile_driver: true needs driven_by: first_member, not 'mean'"):
        MDSettings(compile_driver=True)
