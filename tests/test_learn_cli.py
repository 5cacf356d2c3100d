"""``tace-aiida learn``: the loop's builder from files, a dataset or an ended run, its options and their errors;
a run with EMT labels to its end, then a second run continuing it (slow)."""

from __future__ import annotations

import json

import pytest
from aiida import orm
from ase.build import bulk
from ase.calculators import emt
from ase.io import write
from click.testing import CliRunner
from tace_aiida.workflows.active_learning import ActiveLearningWorkChain

from tace_aiida.cli_learn import LOOP_PROCESS_TYPE, PROTOCOLS, build, learn
from tace_aiida.data.dataset import TrainingSetData
from tace_aiida.generation.cli import read_parents

from .helpers.loop import STAGE, TRAINING

EMT = "ase.calculators.emt.EMT"


@pytest.fixture
def codes(installed_code):
    """The command's code options for the console scripts installed on the test computer."""
    return {"code": installed_code("tace-label").full_label, "train_code": installed_code("tace-train").full_label,
            "md_code": installed_code("tace-md").full_label}


def rattled(atoms, seed: int = 1):
    """``atoms`` with displacements of 0.02 Å, so that their labels have forces (an ideal crystal's vanish)."""
    atoms.rattle(0.02, seed=seed)
    return atoms


@pytest.fixture
def cu_file(tmp_path):
    path = tmp_path / "Cu.cif"
    write(path, rattled(bulk("Cu", "fcc", a=3.61, cubic=True)))
    return path


@pytest.fixture
def ideal_cu_file(tmp_path):
    path = tmp_path / "Cu_ideal.cif"
    write(path, bulk("Cu", "fcc", a=3.61, cubic=True))
    return path


def training_jobs(run) -> list:
    return [node for node in run.called_descendants if node.process_type == "aiida.calculations:tace.train"]


def labelled_dataset(store: bool = True, displaced: bool = True) -> TrainingSetData:
    """One EMT-labelled 4-atom Cu cell, rattled (or, not ``displaced``, ideal: its forces vanish)."""
    atoms = rattled(bulk("Cu", "fcc", a=3.61, cubic=True)) if displaced else bulk("Cu", "fcc", a=3.61, cubic=True)
    atoms.calc = emt.EMT()
    atoms.get_forces()
    dataset = TrainingSetData([atoms])
    return dataset.store() if store else dataset


def test_structures_from_a_file_and_the_protocol_with_overrides(cu_file, codes):
    builder = build(read_parents([cu_file]), protocol="fast", overrides={"selection": {"max_selected": 3}},
                    label="Cu test", **codes)
    fast = ActiveLearningWorkChain.get_protocol_inputs("fast")
    assert list(builder.structures) == ["Cu"]
    assert builder.structures["Cu"].get_ase().get_chemical_formula() == "Cu4"
    assert builder.train.parameters.get_dict() == fast["train"]["parameters"]
    assert builder.selection.get_dict() == {**fast["selection"], "max_selected": 3}
    assert builder.label_ase.calculator.value == EMT and "parameters" not in builder.label_ase
    assert builder.train.code.full_label == codes["train_code"] and builder.metadata.label == "Cu test"


def test_the_protocol_choices_are_the_loops():
    assert sorted(PROTOCOLS) == sorted(ActiveLearningWorkChain.get_available_protocols())


def test_calculator_parameters_go_to_label_ase(cu_file, codes):
    builder = build(read_parents([cu_file]), calculator="ase.calculators.lj.LennardJones",
                    parameters={"sigma": 2.3}, **codes)
    assert builder.label_ase.calculator.value == "ase.calculators.lj.LennardJones"
    assert builder.label_ase.parameters.get_dict() == {"sigma": 2.3}


def test_a_dataset_alone_starts_the_run(codes):
    dataset = labelled_dataset()
    builder = build(None, dataset=dataset.uuid, **codes)
    assert builder.dataset.uuid == dataset.uuid and "structures" not in builder._inputs(prune=True)


@pytest.mark.parametrize(("options", "message"), [
    ({}, r"nothing to start from: give structure FILES, --dataset PK or --continue-from PK"),
    ({"dataset": "1", "continue_from": "2"}, r"give --dataset or --continue-from, not both"),
    ({"train_code": "nonexistent@nowhere"}, r"--train-code 'nonexistent@nowhere': "),
    ({"code": "nonexistent@nowhere"}, r"unknown code 'nonexistent@nowhere'"),
])
def test_bad_options_are_refused_naming_them(cu_file, codes, options, message):
    parents = None if "dataset" in options or not options else read_parents([cu_file])
    with pytest.raises(ValueError, match=message):
        build(parents, **{**codes, **options})


def test_a_dataset_or_run_of_the_wrong_kind_is_named(cu_file, codes):
    other = orm.Int(3).store()
    with pytest.raises(ValueError, match=rf"--dataset '{other.pk}' is a Int<{other.pk}>, not a TrainingSetData"):
        build(None, dataset=str(other.pk), **codes)
    with pytest.raises(ValueError, match=rf"--continue-from '{other.pk}' is Int<{other.pk}> .* not an active-learning"):
        build(None, continue_from=str(other.pk), **codes)


def test_overrides_the_workchain_refuses_are_named(cu_file, codes):
    with pytest.raises(ValueError, match=r"exploration stage 0: steps must be >= 1, not 0"):
        build(read_parents([cu_file]), overrides={"exploration": [{"temperatures": [300], "steps": 0}]}, **codes)


def test_the_command_reports_bad_input_without_a_traceback(tmp_path, cu_file, codes, aiida_profile):
    (tmp_path / "overrides.yaml").write_text("- not a mapping\n")
    result = CliRunner().invoke(learn, [str(cu_file), "--overrides", str(tmp_path / "overrides.yaml"),
                                        "--train-code", codes["train_code"], "--md-code", codes["md_code"],
                                        "--code", codes["code"]])
    assert result.exit_code == 1 and result.exception.__class__ is SystemExit
    assert "overrides.yaml: overrides must be a mapping" in result.output
    result = CliRunner().invoke(learn, ["--code", codes["code"], "--parameters", "{bad json"])
    assert result.exit_code == 1 and "--parameters: not JSON" in result.output


@pytest.mark.slow
def test_a_run_from_a_file_then_a_run_continuing_it(tmp_path, cu_file, codes, aiida_profile):
    """The first run starts from one structure, which the members train on without a validation split."""
    overrides = {"train": {"parameters": {**TRAINING, "valid_fraction": 0.5}}, "ensemble_size": 2, "exploration": [STAGE],
                 "selection": {"trust_low": 0.0, "trust_high": 100.0, "max_selected": 2},
                 "stopping": {"accurate_fraction": 0.0, "max_iterations": 2}}
    (tmp_path / "overrides.json").write_text(json.dumps(overrides))
    options = ["--overrides", str(tmp_path / "overrides.json"), "--code", codes["code"],
               "--train-code", codes["train_code"], "--md-code", codes["md_code"]]
    first = CliRunner().invoke(learn, [str(cu_file), *options, "--output", str(tmp_path / "first")])
    assert first.exit_code == 0, first.output
    assert "finished, exit status 0: converged after 1 iterations, 3 structures in the final dataset" in first.output
    assert sorted(path.name for path in (tmp_path / "first").glob("member*.pt")) == ["member0.pt", "member1.pt"]
    run = orm.QueryBuilder().append(ActiveLearningWorkChain, tag="run").order_by({"run": {"id": "desc"}}).first()[0]
    assert {job.inputs.parameters["valid_fraction"] for job in training_jobs(run)} == {0.0}

    second = CliRunner().invoke(learn, ["--continue-from", str(run.pk), *options, "--output", str(tmp_path / "second")])
    assert second.exit_code == 0, second.output
    continued = orm.QueryBuilder().append(ActiveLearningWorkChain, tag="run").order_by({"run": {"id": "desc"}}).first()[0]
    assert continued.pk != run.pk and continued.inputs.dataset.uuid == run.outputs.dataset.uuid
    assert {job.inputs.parameters["valid_fraction"] for job in training_jobs(continued)} == {0.5}
    given = {potential.uuid for potential in continued.inputs.initial_ensemble.values()}
    assert given == {potential.uuid for potential in run.outputs.ensemble.values()}


def test_the_summary_of_a_run_that_stopped_gives_its_exit_message_as_a_reason(aiida_profile):
    from aiida.common import LinkType

    from tace_aiida.run_summary import summarise

    node = orm.WorkflowNode(process_type=LOOP_PROCESS_TYPE)
    node.set_process_state("finished")
    message = ActiveLearningWorkChain.exit_codes.ERROR_ENSEMBLE_FAILED.format(count=0, minimum=2).message
    node.set_exit_status(403)
    node.set_exit_message(message)
    node.set_process_label("ActiveLearningWorkChain")
    node.store()
    report = orm.Dict({"stop_reason": message, "iterations": []}).store()
    report.base.links.add_incoming(node, link_type=LinkType.RETURN, link_label="report")
    assert summarise(node) == [f"ActiveLearningWorkChain<{node.pk}> finished, exit status 403: Only 0 ensemble members trained; "
                               "at least 2 are needed (after 0 iterations)"]


def test_a_dataset_whose_forces_all_vanish_is_refused_unless_something_else_has_forces(ideal_cu_file, cu_file, codes):
    ideal = labelled_dataset(displaced=False)
    assert ideal.num_force_free == 1 and labelled_dataset().num_force_free == 0
    with pytest.raises(ValueError, match=rf"the forces of all 1 structures of the initial `dataset` {ideal.pk} vanish "
                                         r"\(ideal crystals, say\): .*`tace-aiida generate` with a rattle step"):
        build(None, dataset=str(ideal.pk), **codes)
    with pytest.raises(ValueError, match=r"vanish \(ideal crystals, say\) and every initial structure \(\['Cu_ideal'\]\) "
                                         r"has each atom on such a site"):
        build(read_parents([ideal_cu_file]), dataset=str(ideal.pk), **codes)
    assert build(read_parents([ideal_cu_file]), dataset=str(ideal.pk), rattle=0.05, **codes).transformations
    assert build(read_parents([cu_file]), dataset=str(ideal.pk), **codes).dataset.pk == ideal.pk
    both = TrainingSetData(shards=[ideal, labelled_dataset()]).store()
    assert both.num_force_free == 1 and build(None, dataset=str(both.pk), **codes).dataset.pk == both.pk


def test_single_atom_cells_that_md_cannot_move_are_refused_naming_them(tmp_path, codes):
    write(tmp_path / "POSCAR", bulk("Cu", "fcc", a=3.61), format="vasp")
    one_atom = read_parents([tmp_path / "POSCAR"])
    with pytest.raises(ValueError, match=r"every initial structure has a single atom \(\['POSCAR'\]\): MD from it "
                                         r"explores nothing"):
        build(one_atom, protocol="fast", **codes)
    npt = {"exploration": [{"temperatures": [600], "pressure": 0.0}]}
    assert build(one_atom, protocol="fast", overrides=npt, rattle=0.05, **codes).structures["POSCAR"].get_ase(
    ).get_volume() > 0
    write(tmp_path / "Cu2.cif", rattled(bulk("Cu", "fcc", a=3.61).repeat((2, 1, 1))))
    assert len(build(read_parents([tmp_path / "POSCAR", tmp_path / "Cu2.cif"]), **codes).structures) == 2


def test_ideal_crystals_are_refused_until_rattled_copies_are_labelled_beside_them(ideal_cu_file, codes):
    parents = read_parents([ideal_cu_file])
    with pytest.raises(ValueError, match=r"every initial structure \(\['Cu_ideal'\]\) has each atom on a site where its "
                                         r"symmetry forbids a force.*`tace-aiida learn --rattle 0.05`"):
        build(parents, **codes)
    builder = build(parents, rattle=0.05, rattle_copies=2, **codes)
    assert builder.transformations.get_list() == [{"type": "rattle", "amplitudes": [0.05], "copies": 2,
                                                   "keep_parents": True}]
    chain = [{"type": "strain", "volumetric": [0.01], "keep_parents": True}, {"type": "rattle", "keep_parents": True}]
    assert build(parents, overrides={"transformations": chain}, **codes).transformations.get_list() == chain
    with pytest.raises(ValueError, match=r"give --rattle or `transformations` in --overrides, not both"):
        build(parents, rattle=0.05, overrides={"transformations": chain}, **codes)
    with pytest.raises(ValueError, match=r"amplitudes must be >= 0.0, not \[-1\]"):
        build(parents, overrides={"transformations": [{"type": "rattle", "amplitudes": [-1]}]}, **codes)
    with pytest.raises(ValueError, match=r"`transformations` apply to the initial `structures`, and none were given"):
        build(None, dataset=str(labelled_dataset().pk), rattle=0.05, **codes)
    assert build(parents, dataset=str(labelled_dataset().pk), **codes).dataset, "a labelled dataset beside them is enough"


@pytest.mark.slow
def test_an_ideal_crystal_learns_from_its_rattled_copies(tmp_path, ideal_cu_file, codes, aiida_profile):
    overrides = {"train": {"parameters": TRAINING}, "ensemble_size": 2, "exploration": [STAGE],
                 "selection": {"trust_low": 0.0, "trust_high": 100.0, "max_selected": 2},
                 "stopping": {"accurate_fraction": 0.0, "max_iterations": 1}}
    (tmp_path / "overrides.json").write_text(json.dumps(overrides))
    result = CliRunner().invoke(learn, [str(ideal_cu_file), "--rattle", "0.05", "--rattle-copies", "2", "--overrides",
                                        str(tmp_path / "overrides.json"), "--code", codes["code"], "--train-code",
                                        codes["train_code"], "--md-code", codes["md_code"], "--output", str(tmp_path)])
    assert result.exit_code == 0, result.output
    run = orm.QueryBuilder().append(ActiveLearningWorkChain, tag="run").order_by({"run": {"id": "desc"}}).first()[0]
    messages = [log.message for log in orm.Log.collection.get_logs_for(run)]
    assert any(message.endswith("labelling 3 variants of the 1 initial structures") for message in messages)
    (generation,) = [node for node in run.called if node.process_label == "generate_variants"]
    assert generation.inputs.transformations.get_list()[0]["amplitudes"] == [0.05]
    initial = [atoms for atoms in run.outputs.dataset.get_atoms() if "parent" in atoms.info]
    largest = sorted(float(abs(atoms.get_forces()).max()) for atoms in initial)
    assert len(initial) == 3 and largest[0] < 1e-8 < 0.05 < largest[1], "the ideal cell has no force, its copies do"


def test_calculator_parameters_with_a_pw_code_are_refused(cu_file, codes, aiida_code_installed):
    pw = aiida_code_installed(label="pw-learn", default_calc_job_plugin="quantumespresso.pw")
    with pytest.raises(ValueError, match=rf"--parameters: only for a tace-label code; code '{pw.full_label}' labels with"):
        build(read_parents([cu_file]), **{**codes, "code": pw.full_label}, parameters={"sigma": 2.3})


@pytest.mark.slow
def test_a_run_whose_structures_cannot_be_labelled_names_the_first_error(tmp_path, codes, aiida_profile):
    write(tmp_path / "Si.cif", rattled(bulk("Si", "diamond", a=5.43, cubic=True)))
    result = CliRunner().invoke(learn, [str(tmp_path / "Si.cif"), "--code", codes["code"], "--train-code",
                                        codes["train_code"], "--md-code", codes["md_code"], "--protocol", "fast"])
    assert result.exit_code == 1, result.output
    assert ("exit status 405: No structure of the initial set could be labelled: structure 0: NotImplementedError: "
            "No EMT-potential for Si (after 0 iterations)") in result.output


@pytest.mark.slow
def test_a_killed_run_is_continued_from_what_its_graph_holds(tmp_path, installed_code, codes, aiida_profile):
    """Killed once its first ensemble trained (no outputs): the next run takes the initial labels and those members."""
    import asyncio

    from aiida.manage import get_manager
    from plumpy import ensure_portal

    from .helpers.loop import builder_for

    runner = get_manager().get_runner()
    process = runner.instantiate_process(builder_for(installed_code))

    def first_ensemble_trained() -> bool:
        return any(link.link_label.startswith("iteration_01_md_")
                   for link in process.node.base.links.get_outgoing().all())

    async def run_and_kill() -> None:
        stepping = asyncio.ensure_future(process.step_until_terminated())
        await ensure_portal()
        while not first_ensemble_trained():
            assert not stepping.done(), "the run ended before its MD started"
            await asyncio.sleep(0.1)
        killing = process.kill("killed by the test")  # a future while the children it kills first end
        if asyncio.isfuture(killing):
            await asyncio.wait_for(killing, 60)
        await asyncio.wait([stepping], timeout=60)

    runner.loop.run_until_complete(run_and_kill())
    killed = process.node
    assert killed.is_killed and "dataset" not in killed.outputs and "ensemble" not in killed.outputs

    labels = killed.base.links.get_outgoing(link_label_filter="label_initial").one().node.outputs.dataset
    members = [killed.base.links.get_outgoing(link_label_filter=f"iteration_01_train_{k}").one().node.outputs.potential
               for k in range(2)]
    overrides = {"train": {"parameters": TRAINING}, "ensemble_size": 2, "exploration": [STAGE],
                 "selection": {"trust_low": 0.0, "trust_high": 100.0, "max_selected": 2},
                 "stopping": {"accurate_fraction": 0.0, "max_iterations": 1}}
    (tmp_path / "overrides.json").write_text(json.dumps(overrides))
    result = CliRunner().invoke(learn, ["--continue-from", str(killed.pk), "--overrides", str(tmp_path / "overrides.json"),
                                        "--code", codes["code"], "--train-code", codes["train_code"],
                                        "--md-code", codes["md_code"], "--output", str(tmp_path / "continued")])
    assert result.exit_code == 0, result.output
    assert (f"the run is killed; continuing from the last dataset it made, TrainingSetData<{labels.pk}> (2 structures), "
            "and the 2 members trained in iteration 1") in result.output
    continued = orm.QueryBuilder().append(ActiveLearningWorkChain, tag="run").order_by({"run": {"id": "desc"}}).first()[0]
    assert continued.is_finished_ok
    assert continued.inputs.dataset.uuid == labels.uuid
    assert [continued.inputs.initial_ensemble[f"member_{k}"].uuid for k in range(2)] == [m.uuid for m in members]
    assert continued.outputs.dataset.num_structures > labels.num_structures


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_an_interrupted_run_ends_the_processes_and_jobs_it_started(fast_polling, installed_code, aiida_localhost,
                                                                   tmp_path):
    """Ctrl-C of a run in the foreground: aiida-core kills the run only, leaving its trainings `Waiting` for ever
    and their jobs running; the run's children are ended with it and their jobs stopped."""
    import os
    import signal
    import threading
    import time
    from pathlib import Path

    from tace_aiida.run_summary import execute

    from .helpers.loop import builder_for, called

    builder = builder_for(installed_code, stopping={"max_iterations": 1})
    builder.train.parameters = orm.Dict({**TRAINING, "max_epochs": 1_000_000})
    workdir, started = Path(aiida_localhost.get_workdir()), time.time()

    def interrupt_once_a_training_runs() -> None:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            if any(path.stat().st_mtime > started for path in workdir.glob("*/*/*/metrics.jsonl")):
                os.kill(os.getpid(), signal.SIGINT)  # what Ctrl-C sends; the runner's handler takes it
                return
            time.sleep(0.5)

    watcher = threading.Thread(target=interrupt_once_a_training_runs, daemon=True)
    watcher.start()
    node = execute(builder, tmp_path)
    watcher.join()
    assert node.is_killed
    trainings = called(node, "tace.train")
    assert trainings and all(job.is_killed for job in trainings)
    assert all(child.is_terminated for child in node.called_descendants)
    assert {job.process_status for job in trainings} == {f"Killed with parent<{node.pk}>, whose run was interrupted"}
    for job in trainings:
        if job.get_job_id() is not None:
            deadline = time.monotonic() + 30
            while Path(f"/proc/{job.get_job_id()}").exists() and time.monotonic() < deadline:
                time.sleep(0.5)
            assert not Path(f"/proc/{job.get_job_id()}").exists(), "the training job is stopped"


def ended_loop(state: str, **inputs: orm.Data) -> orm.WorkflowNode:
    """A stored loop node in ``state`` with ``inputs`` linked, as the engine leaves a run that ended."""
    from aiida.common import LinkType

    node = orm.WorkflowNode(process_type=LOOP_PROCESS_TYPE)
    for label, value in inputs.items():
        node.base.links.add_incoming(value.store(), link_type=LinkType.INPUT_WORK, link_label=label)
    node.set_process_state(state)
    node.set_process_label("ActiveLearningWorkChain")
    node.store()
    return node


def called_child(run: orm.WorkflowNode, label: str, ok: bool, **outputs: orm.Data) -> None:
    """A finished child of ``run`` called as ``label`` (a calcfunction when ``label`` is a function's name)."""
    from aiida.common import LinkType

    function = not label.startswith(("iteration_", "label_"))
    child = orm.CalcFunctionNode() if function else orm.WorkflowNode()
    child.set_process_label(label if function else "TrainBaseWorkChain")
    child.set_process_state("finished")
    child.set_exit_status(0 if ok else 300)
    child.base.links.add_incoming(run, link_type=LinkType.CALL_CALC if function else LinkType.CALL_WORK,
                                  link_label="CALL" if function else label)
    child.store()
    for name, value in outputs.items():  # a calcfunction creates its outputs, a workflow returns stored ones
        if not function:
            value.store()
        value.base.links.add_incoming(child, link_type=LinkType.CREATE if function else LinkType.RETURN, link_label=name)
        value.store()


def test_a_killed_run_continues_from_its_last_merge_and_last_iteration_with_enough_members(aiida_profile):
    from tace_aiida.continuation import continuation_of, progress_of

    run = ended_loop("killed", ensemble_size=orm.Int(3), stopping=orm.Dict({"min_members": 2}),
                     dataset=labelled_dataset())
    first, second = labelled_dataset(store=False), labelled_dataset(store=False)
    called_child(run, "merge_datasets", True, result=first)
    called_child(run, "merge_datasets", True, result=second)
    members = {label: orm.Str(label) for label in ("iteration_01_train_0", "iteration_01_train_2",
                                                               "iteration_02_train_1")}
    called_child(run, "iteration_01_train_2", True, potential=members["iteration_01_train_2"])
    called_child(run, "iteration_01_train_0", True, potential=members["iteration_01_train_0"])
    called_child(run, "iteration_01_train_1", False)
    called_child(run, "iteration_02_train_1", True, potential=members["iteration_02_train_1"])
    continuation = continuation_of(run)
    assert progress_of(run) == "iteration 2, 1 structures in its dataset so far"
    assert continuation.dataset.uuid == second.uuid, "the last merge holds every label"
    assert [member.value for member in continuation.ensemble.values()] == ["iteration_01_train_0", "iteration_01_train_2"]
    assert continuation.note == (f"the run is killed; continuing from the last dataset it made, TrainingSetData<"
                                 f"{second.pk}> (1 structures), and the 2 members trained in iteration 1")

    from tace_aiida.cli import summary

    shown = CliRunner().invoke(summary, [str(run.pk)])
    assert shown.exit_code == 1
    assert (f"ActiveLearningWorkChain<{run.pk}> killed: no report; `tace-aiida learn --continue-from {run.pk}` "
            "continues from the last dataset and ensemble it made") in shown.output


def test_summary_and_plot_name_what_a_pk_is_when_it_is_no_ended_run(aiida_profile, tmp_path):
    from tace_aiida.cli import plot, summary

    data = orm.Int(3).store()
    running = ended_loop("waiting")
    for command in (summary, plot):
        result = CliRunner().invoke(command, [str(data.pk), "--output", str(tmp_path)])
        assert result.exit_code == 1 and result.exception.__class__ is SystemExit
        assert f"PK '{data.pk}' is Int<{data.pk}> (no process), not an active-learning run" in result.output
        result = CliRunner().invoke(command, ["999999999"])
        assert result.exit_code == 1 and "PK '999999999': no Node found with ID<999999999>" in result.output
        result = CliRunner().invoke(command, [str(running.pk)])
        assert (f"PK '{running.pk}': the run has not ended yet (waiting, labelling its initial structures; `verdi "
                f"process report {running.pk}` follows it)") in result.output


def test_a_run_that_labelled_nothing_cannot_be_continued(codes, aiida_profile):
    run = ended_loop("excepted", ensemble_size=orm.Int(2), stopping=orm.Dict({}))
    with pytest.raises(ValueError, match=rf"--continue-from '{run.pk}': the run is excepted and labelled nothing"):
        build(None, continue_from=str(run.pk), **codes)


def test_a_test_dataset_with_an_element_the_run_never_sees_is_refused(cu_file, codes):
    alloy = bulk("Cu", "fcc", a=3.61, cubic=True)
    alloy[0].symbol = "Ni"
    alloy.info["energy"] = -0.1
    alloy.arrays["forces"] = 0.0 * alloy.positions
    test_set = TrainingSetData([alloy]).store()
    with pytest.raises(ValueError, match=r"the test_dataset holds \['Ni'\], which no initial structure or dataset frame "
                                         r"has \(\['Cu'\]\): the members could not be scored on it"):
        build(read_parents([cu_file]), test_dataset=str(test_set.pk), **codes)


def test_a_test_dataset_scores_every_member_and_shows_in_the_summary(cu_file, codes):
    from tace_aiida.run_summary import iteration_line

    test_set = labelled_dataset()
    builder = build(read_parents([cu_file]), test_dataset=str(test_set.uuid), **codes)
    assert builder.test_dataset.uuid == test_set.uuid
    other = orm.Int(4).store()
    with pytest.raises(ValueError, match=rf"--test-dataset '{other.pk}' is a Int<{other.pk}>, not a TrainingSetData"):
        build(read_parents([cu_file]), test_dataset=str(other.pk), **codes)
    entry = {"iteration": 2, "dataset_size": 10, "accurate_fraction": 0.5, "selected": 3, "label_failures": 0,
             "valid_forces_rmse": 0.0204, "test_forces_rmse": 0.0316}
    assert iteration_line(entry).endswith("validation force RMSE 20 meV/Å, test 32 meV/Å")
    assert iteration_line({**entry, "test_forces_rmse": None}).endswith("validation force RMSE 20 meV/Å")
