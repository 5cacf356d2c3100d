"""The restart handlers of ``tace.train_base``, each on a generated failed TrainCalculation (fast, no job runs)."""

from __future__ import annotations

import pytest
from aiida import orm
from aiida.common import LinkType
from aiida.engine import ProcessHandlerReport
from aiida.engine.utils import instantiate_process
from aiida.manage import get_manager
from ase.build import bulk
from tace_aiida.workflows.train import TrainBaseWorkChain

from tace_aiida.calculations.train import TrainCalculation
from tace_aiida.data import TrainingSetData

from .helpers.interrupted import handler_entries, iteration_01_jobs, job_of_an_interrupted_step

PARAMETERS = {"max_epochs": 2, "lr": 0.005}
TRAIN_TYPE = "aiida.calculations:tace.train"


@pytest.fixture
def workchain(aiida_localhost):
    """A TrainBaseWorkChain after ``setup``, as the engine leaves it before running its CalcJob."""
    code = orm.InstalledCode(label="tace-train-handlers", computer=aiida_localhost, filepath_executable="/bin/true")
    inputs = {"train": {"code": code.store(), "dataset": TrainingSetData([bulk("Cu")]),
                        "parameters": orm.Dict(PARAMETERS)}}
    process = instantiate_process(get_manager().get_runner(), TrainBaseWorkChain, **inputs)
    process.setup()
    return process


def failed_training(process: TrainBaseWorkChain, exit_code, restart: bool = False) -> orm.CalcJobNode:
    """A finished TrainCalculation node called by ``process`` with ``exit_code`` (and a ``restart`` output)."""
    node = orm.CalcJobNode(computer=process.ctx.inputs.code.computer, process_type=TRAIN_TYPE)
    node.set_process_state("finished")
    node.set_exit_status(exit_code.status)
    node.set_exit_message(exit_code.message)
    node.base.links.add_incoming(process.node, link_type=LinkType.CALL_CALC, link_label="iteration_01")
    node.store()
    if restart:
        output = orm.SinglefileData.from_string("state after epoch 4", filename="restart.pt")
        output.base.links.add_incoming(node, link_type=LinkType.CREATE, link_label="restart")
        output.store()
    return node


def test_nan_loss_is_retried_with_a_ten_times_lower_learning_rate(workchain):
    node = failed_training(workchain, TrainCalculation.exit_codes.ERROR_NAN_LOSS.format(message="loss became nan"))
    result = workchain.handle_nan_loss(node)
    assert isinstance(result, ProcessHandlerReport) and result.do_break and result.exit_code.status == 0
    assert workchain.ctx.inputs.parameters.get_dict() == {**PARAMETERS, "lr": pytest.approx(0.0005)}


def test_a_lost_job_runs_again_unchanged(workchain):
    node = failed_training(workchain, TrainCalculation.exit_codes.ERROR_JOB_LOST)
    result = workchain.handle_job_lost(node)
    assert result.do_break and result.exit_code.status == 0
    assert workchain.ctx.inputs.parameters.get_dict() == PARAMETERS
    assert "restart" not in workchain.ctx.inputs, "without a restart file it starts over"


@pytest.mark.parametrize("handler, exit_code", [("handle_job_lost", "ERROR_JOB_LOST"),
                                                 ("handle_out_of_walltime", "ERROR_OUT_OF_WALLTIME")])
def test_a_stopped_job_continues_from_its_restart_file(workchain, handler, exit_code):
    code = TrainCalculation.exit_codes[exit_code]
    node = failed_training(workchain, code.format(progress="after epoch 4") if "{" in code.message else code, restart=True)
    result = getattr(workchain, handler)(node)
    assert result.do_break and result.exit_code.status == 0
    assert workchain.ctx.inputs.restart.uuid == node.outputs.restart.uuid
    assert workchain.ctx.inputs.parameters.get_dict() == PARAMETERS, "a continued training keeps its settings"


def test_refused_settings_end_the_run_with_the_reason(workchain):
    message = "valid_fraction=0.5 leaves no training structure out of 1"
    node = failed_training(workchain, TrainCalculation.exit_codes.ERROR_INVALID_SETTINGS.format(message=message))
    result = workchain.handle_invalid_settings(node)
    assert result.do_break and result.exit_code.status == TrainBaseWorkChain.exit_codes.ERROR_INVALID_SETTINGS.status
    assert result.exit_code.message.endswith(f"would not change: The program refused its settings or input: {message}")


def test_a_nan_loss_after_a_restart_starts_over(workchain):
    workchain.ctx.inputs.restart = orm.SinglefileData.from_string("state", filename="restart.pt").store()
    workchain.handle_nan_loss(failed_training(workchain, TrainCalculation.exit_codes.ERROR_NAN_LOSS.format(message="x")))
    assert "restart" not in workchain.ctx.inputs, "a restart file of another learning rate cannot be continued"


def test_handlers_react_only_to_their_exit_codes_and_in_priority_order(workchain):
    by_priority = sorted(workchain.get_process_handlers(), key=lambda handler: -handler.priority)
    handlers = {handler.__name__: handler for handler in by_priority}
    assert list(handlers) == ["handle_invalid_settings", "handle_job_lost", "handle_out_of_walltime",
                              "handle_nan_loss"], "refused settings stop first; continuing comes before changing settings"
    for transient in ("ERROR_OUTPUT_CORRUPT", "ERROR_READ_WRITE"):
        node = failed_training(workchain, TrainCalculation.exit_codes[transient].format(message="x"))
        assert all(handler(workchain, node) is None for handler in handlers.values()), f"{transient}: retried once"
    assert workchain.inputs.on_unhandled_failure.value == "restart_once"
    assert TrainCalculation.exit_codes.ERROR_NAN_LOSS.status // 100 == 4, "recoverable codes are 4xx"
    assert TrainCalculation.exit_codes.ERROR_INVALID_SETTINGS.status // 100 == 3, "unrecoverable codes are 3xx"


def test_run_process_again_after_a_crash_keeps_the_job_it_sent(workchain):
    """The step runs again from the last checkpoint, with the same iteration number: the job sent is awaited."""
    sent = job_of_an_interrupted_step(workchain, workchain.ctx.inputs.code.computer, TRAIN_TYPE, checkpoint="state: saved")
    awaited = workchain.run_process()["children"]
    assert awaited.pk == sent.pk
    assert [job.pk for job in iteration_01_jobs(workchain)] == [sent.pk], "nothing else was submitted"
    assert sent.process_state.value == "created"
    assert handler_entries(workchain) == [[]], "one entry for iteration 1, not one per attempt"


def test_run_process_again_after_a_crash_replaces_a_job_never_sent(workchain):
    """A job stored without a checkpoint was never sent to a worker: it is marked killed and a new one submitted."""
    orphan = job_of_an_interrupted_step(workchain, workchain.ctx.inputs.code.computer, TRAIN_TYPE, checkpoint=None)
    fresh = orm.load_node(workchain.run_process()["children"].pk)
    assert fresh.pk != orphan.pk and fresh.process_type == orphan.process_type
    assert fresh.inputs.parameters.get_dict() == PARAMETERS
    assert orphan.is_killed and orphan.is_sealed
    assert handler_entries(workchain) == [[]], "one entry for iteration 1, not one per attempt"
