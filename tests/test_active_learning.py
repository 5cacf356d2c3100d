"""End-to-end active learning with EMT: iterations, provenance, report, stopping and failure rules."""

from __future__ import annotations

from pathlib import Path

import pytest
from aiida import orm
from aiida.engine import run_get_node
from ase.build import bulk
from tace_aiida.workflows.active_learning import ActiveLearningWorkChain

from tace_aiida.calculations.label_ase import AseLabelCalculation
from tace_aiida.run_summary import export_run, summarise

from .helpers.loop import STAGE, builder_for, called

pytestmark = pytest.mark.slow

HELPERS = Path(__file__).parent / "helpers"
def test_two_iterations_grow_the_dataset_with_full_provenance(fast_polling, installed_code, tmp_path):
    results, node = run_get_node(builder_for(installed_code))
    assert node.exit_status == ActiveLearningWorkChain.exit_codes.ERROR_MAX_ITERATIONS.status
    report = results["report"].get_dict()
    iterations = report["iterations"]
    assert report["stop_reason"] == "max_iterations" and len(iterations) == 2
    for entry in iterations:
        assert entry["accurate_fraction"] + entry["candidate_fraction"] + entry["failed_fraction"] == pytest.approx(1.0)
        assert entry["frames"] == 2 * (STAGE["steps"] // STAGE["save_interval"] + 1)
        assert entry["selected"] == 3
        assert entry["members"] == 2
        assert len(entry["calibration"]["predicted_max_force_std"]) == 3
    assert iterations[1]["dataset_size"] == 2 + 3
    final = results["dataset"]
    assert final.num_structures == 2 + 3 + 3, "the dataset grows by exactly the selected structures"
    assert len(results["ensemble"]) == 2

    label_calcs = {n.uuid for n in called(node, "tace.label_ase")}
    md_trajectories = {n.outputs.trajectory.uuid: n for n in called(node, "tace.md")}
    from_md = 0
    for atoms in final.get_atoms():
        assert atoms.info["label_uuid"] in label_calcs
        if "source_frame" in atoms.info:
            from_md += 1
            md_node = md_trajectories[atoms.info["source_uuid"]]
            assert atoms.info["md_step"] in list(md_node.outputs.trajectory.get_stepids())
    assert from_md == 6

    summary = summarise(node)
    assert summary[0].endswith("max_iterations after 2 iterations, 8 structures in the final dataset")
    assert summary[2].startswith("  iteration 2: 5 structures, accurate")
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "member2.pt").write_text("a member of an earlier, larger ensemble")
    written = export_run(node, tmp_path / "run")
    assert not (tmp_path / "run" / "member2.pt").exists(), "member*.pt is this run's ensemble only"
    assert sorted(p.name for p in written) == ["calibration.png", "learning_curve.png", "member0.pt", "member1.pt",
                                               "uncertainty.png"]
    assert all(p.stat().st_size > 0 for p in written)

    second = builder_for(installed_code, stopping={"max_iterations": 1})
    second.dataset = final
    second.initial_ensemble = dict(results["ensemble"])
    continued, continued_node = run_get_node(second)
    first_training = called(continued_node, "tace.train")[0]
    assert first_training.inputs.parent_potential.uuid in {p.uuid for p in results["ensemble"].values()}
    assert continued["report"]["iterations"][0]["dataset_size"] == final.num_structures + 2


def test_converged_stages_advance_then_stop(fast_polling, installed_code):
    stages = [{**STAGE, "name": "cold"}, {**STAGE, "name": "hot", "temperatures": [900]}]
    results, node = run_get_node(builder_for(
        installed_code, stages=stages, selection={"trust_low": 50.0, "trust_high": 100.0}, stopping={"max_iterations": 5},
    ))
    assert node.is_finished_ok, node.exit_message
    report = results["report"].get_dict()
    assert report["stop_reason"] == "converged"
    assert [entry["stage"] for entry in report["iterations"]] == [0, 1]
    assert all(entry["accurate_fraction"] == 1.0 and entry["selected"] == 0 for entry in report["iterations"])
    assert len(called(node, "tace.train_base")) == 2, "no new data in iteration 2: the ensemble is kept, not retrained"


def test_no_candidates_stops_the_loop_with_an_exit_code(fast_polling, installed_code):
    results, node = run_get_node(builder_for(
        installed_code, selection={"trust_low": 0.0, "trust_high": 1e-9}, stopping={"max_iterations": 5},
    ))
    assert node.exit_status == ActiveLearningWorkChain.exit_codes.ERROR_NO_CANDIDATES.status
    assert node.exit_message.startswith("Iteration 1 found no frame to label and did not converge: 0% of its frames "
                                        "accurate, 100% beyond trust_high")
    report = results["report"].get_dict()
    assert report["stop_reason"] == "no_candidates" and len(report["iterations"]) == 1
    assert report["iterations"][0]["failed_fraction"] == 1.0
    assert {"dataset", "report"} <= set(results) and len(results["ensemble"]) == 2, "the outputs are kept"


def test_too_many_failed_labels_stop_with_an_exit_code(fast_polling, installed_code, aiida_localhost):
    code = orm.InstalledCode(label="tace-label-flaky", computer=aiida_localhost, filepath_executable=str(installed_code("tace-label").filepath_executable))
    code.prepend_text = f"export PYTHONPATH={HELPERS.parent.parent}:$PYTHONPATH"
    code.store()
    builder = builder_for(installed_code, calculator="tests.helpers.flaky_emt.EMTFailingOnSelectedFrames")
    builder.label_ase.code = code
    _, node = run_get_node(builder)
    assert node.exit_status == ActiveLearningWorkChain.exit_codes.ERROR_TOO_MANY_LABEL_FAILURES.status
    assert "100%" in node.exit_message
    assert {"dataset", "report"} <= set(node.outputs) and len(node.outputs.ensemble) == 2, "outputs made so far are kept"
    (entry,) = node.outputs.report["iterations"]
    assert entry["label_failures"] == entry["selected"] == 3, "the iteration that stopped the run is in the report"


def test_a_failing_member_is_retried_once_then_left_out(fast_polling, installed_code, aiida_localhost):
    code = orm.InstalledCode(label="tace-train-flaky", computer=aiida_localhost,
                             filepath_executable=str(HELPERS / "train_failing_for_seed_3"))
    code.store()
    builder = builder_for(installed_code, ensemble_size=3, stopping={"max_iterations": 1})
    builder.train.code = code
    results, node = run_get_node(builder)
    assert node.exit_status in (0, ActiveLearningWorkChain.exit_codes.ERROR_MAX_ITERATIONS.status)
    assert len(results["ensemble"]) == 2
    member_3 = [n for n in called(node, "tace.train_base") if n.inputs.train.seed.value == 3]
    assert len(member_3) == 1 and not member_3[0].is_finished_ok
    assert len(called(member_3[0], "tace.train")) == 2, "the failed member is retried exactly once"


def test_members_continued_on_a_new_element_train_from_scratch(fast_polling, installed_code):
    first, _ = run_get_node(builder_for(installed_code, stopping={"max_iterations": 1}))
    alloy = bulk("Cu", "fcc", a=3.6, cubic=True)
    alloy[0].symbol = "Ni"
    alloy.rattle(0.02, seed=3)
    second = builder_for(installed_code, stopping={"max_iterations": 1})
    second.structures = {"cuni": orm.StructureData(ase=alloy)}
    second.dataset = first["dataset"]
    second.initial_ensemble = dict(first["ensemble"])
    _, node = run_get_node(second)
    assert node.exit_status in (0, ActiveLearningWorkChain.exit_codes.ERROR_MAX_ITERATIONS.status), node.exit_message
    trainings = called(node, "tace.train")
    assert len(trainings) == 2 and all(job.is_finished_ok for job in trainings)
    assert not any("parent_potential" in job.inputs for job in trainings), "a warm start cannot add a species"
    messages = [log.message for log in orm.Log.collection.get_logs_for(node)]
    assert any(message.endswith("iteration 1: the dataset brings ['Ni'], which the members were not trained on; "
                                "they train from scratch") for message in messages)


def test_caching_skips_identical_labelling(fast_polling, installed_code):
    from aiida.manage.caching import enable_caching

    from tace_aiida.data import TrainingSetData

    structures = [bulk("Cu", "fcc", a=3.6 + 0.01 * i) for i in range(2)]
    inputs = {"code": installed_code("tace-label"), "calculator": orm.Str("ase.calculators.emt.EMT")}
    with enable_caching(identifier="aiida.calculations:tace.label_ase"):
        _, first = run_get_node(AseLabelCalculation, structures=TrainingSetData(structures), **inputs)
        _, second = run_get_node(AseLabelCalculation, structures=TrainingSetData(structures), **inputs)
    assert first.is_finished_ok and second.is_finished_ok
    assert second.base.caching.is_created_from_cache
    assert second.base.caching.get_cache_source() == first.uuid


def test_md_runs_beyond_max_concurrent_wait_for_the_earlier_ones(fast_polling, installed_code):
    builder = builder_for(installed_code, selection={"trust_low": 50.0, "trust_high": 100.0},
                          stopping={"max_iterations": 1})
    builder.md.max_concurrent = orm.Int(1)
    _, node = run_get_node(builder)
    assert node.is_finished_ok, node.exit_message
    links = sorted(node.base.links.get_outgoing(link_label_filter="iteration_01_md_%").all(),
                   key=lambda link: link.link_label)
    assert [link.link_label for link in links] == ["iteration_01_md_000", "iteration_01_md_001"]
    first, second = (link.node for link in links)
    assert first.is_finished_ok and second.is_finished_ok
    assert second.ctime >= first.mtime, "the second MD run was created after the first had ended"
    messages = [log.message for log in orm.Log.collection.get_logs_for(node)]
    assert any(message.endswith("iteration 1: launched MD runs 1 to 1 of 2") for message in messages), messages


def test_calibrated_adaptive_selection_scales_the_next_iteration_and_converges_on_a_steady_lower_bound(
        fast_polling, installed_code):
    """Calibration: the scale fitted on iteration 1's labels multiplies iteration 2's deviations and divides its
    MD stop threshold. Adaptive window: only the 4 most uncertain frames are candidates (maxdet picks 3 of them),
    and the run converges in iteration 2, the first whose lower bound can be compared with an earlier one."""
    selection = {"trust_low": 0.0, "trust_high": 100.0, "max_selected": 3, "calibrate": True, "diversity": "maxdet",
                 "adaptive_candidates": 4}
    stopping = {"max_iterations": 3, "accurate_fraction": 1.0, "lower_bound_tolerance": 100.0}
    results, node = run_get_node(builder_for(installed_code, selection=selection, stopping=stopping))
    assert node.is_finished_ok, node.exit_message
    report = results["report"].get_dict()
    assert report["stop_reason"] == "converged" and len(report["iterations"]) == 2
    first, second = report["iterations"]
    assert first["calibration"]["scale_used"] == 1.0
    fitted = first["calibration"]["scale"]
    assert fitted > 0.0 and fitted != pytest.approx(1.0), "EMT errors of tiny 2-epoch members are not the deviation"
    assert second["calibration"]["scale_used"] == pytest.approx(fitted)
    selections = sorted(called(node, "select_frames"), key=lambda n: n.pk)
    assert selections[0].inputs.uncertainty_scale.value == 1.0
    assert selections[1].inputs.uncertainty_scale.value == pytest.approx(fitted)
    md = sorted(called(node, "tace.md"), key=lambda n: n.pk)
    thresholds = [n.inputs.parameters["max_force_std"] for n in md]
    assert thresholds[-1] == pytest.approx(thresholds[0] / fitted)
    for entry, selected in zip(report["iterations"], selections, strict=True):
        frames = entry["frames"]
        assert round(entry["candidate_fraction"] * frames) == 4 and entry["selected"] == 3
        scale = selected.inputs.uncertainty_scale.value
        trajectories = [link.node for link in selected.base.links.get_incoming().all() if link.link_label.startswith("run_")]
        deviations = sorted((scale * value for trajectory in trajectories
                             for value in trajectory.get_array("max_force_std")), reverse=True)
        assert len(deviations) == frames and entry["lower_bounds"][""] == pytest.approx(deviations[3])


def test_one_member_drives_the_loop_by_its_feature_uncertainty(fast_polling, installed_code):
    """``selection.uncertainty = features`` with one member: the MD runs record that member's expected force
    errors (an ensemble of one has no spread), and frames are selected and labelled from them."""
    selection = {"trust_low": 0.0, "trust_high": 100.0, "max_selected": 3, "uncertainty": "features"}
    results, node = run_get_node(builder_for(installed_code, selection=selection, ensemble_size=1,
                                             stopping={"max_iterations": 1, "min_members": 1}))
    assert node.exit_status == ActiveLearningWorkChain.exit_codes.ERROR_MAX_ITERATIONS.status, node.exit_message
    md_runs = called(node, "tace.md")
    assert md_runs
    for md_run in md_runs:
        assert md_run.inputs.parameters["uncertainty"] == "features"
        assert (md_run.outputs.trajectory.get_array("max_force_std") > 0.0).all()
    (entry,) = results["report"].get_dict()["iterations"]
    assert entry["selected"] == 3 and entry["members"] == 1


def test_loop_runs_members_with_the_long_range_term(fast_polling, installed_code):
    """``model: {long_range: true}`` reaches every member: they train, run MD on periodic cells with the
    Ewald sum, and frames are selected from their spread."""
    results, node = run_get_node(builder_for(installed_code, model={"long_range": True},
                                             stopping={"max_iterations": 1}))
    assert node.exit_status == ActiveLearningWorkChain.exit_codes.ERROR_MAX_ITERATIONS.status, node.exit_message
    for potential in results["ensemble"].values():
        calculator = potential.get_calculator(device="cpu")
        assert calculator.models[0].config.long_range
    md_runs = called(node, "tace.md")
    assert md_runs and all(run.is_finished_ok for run in md_runs)
    (entry,) = results["report"].get_dict()["iterations"]
    assert entry["selected"] == 3


def test_loop_runs_members_on_the_tdn_fast_path(fast_polling, installed_code):
    """``model: {tensor_decomposition: true, cp_rank: 28}`` reaches every member: they train with
    CP-decomposed products, run MD, and frames are selected from their spread."""
    model = {"tensor_decomposition": True, "cp_rank": 28}
    results, node = run_get_node(builder_for(installed_code, model=model, stopping={"max_iterations": 1}))
    assert node.exit_status == ActiveLearningWorkChain.exit_codes.ERROR_MAX_ITERATIONS.status, node.exit_message
    for potential in results["ensemble"].values():
        config = potential.get_calculator(device="cpu").models[0].config
        assert config.tensor_decomposition and config.cp_rank == 28
    md_runs = called(node, "tace.md")
    assert md_runs and all(run.is_finished_ok for run in md_runs)
    (entry,) = results["report"].get_dict()["iterations"]
    assert entry["selected"] == 3
