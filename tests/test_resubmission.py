"""Which children of an interrupted step are kept after a daemon restart, on generated nodes (fast)."""

from __future__ import annotations

from types import SimpleNamespace

import plumpy
import pytest
from aiida import orm
from aiida.common.links import LinkType
from aiida.engine import ProcessState, WorkChain
from aiida.engine.persistence import AiiDAPersister
from aiida.engine.processes.launcher import ProcessLauncher
from aiida.manage import get_manager
from tace_aiida.workflows.resubmission import (
    ABANDONED_STATUS,
    INTERRUPTED_STATUS,
    ClosesInterruptedCalcfunctions,
    abandon,
    can_still_run,
    close_interrupted_calcfunctions,
    existing_child,
    never_ran,
    submit_once,
)


def child_of(parent: orm.WorkflowNode, link_label: str, state: ProcessState, checkpoint: str | None) -> orm.WorkflowNode:
    node = orm.WorkflowNode()
    node.set_process_state(state)
    if checkpoint is not None:
        node.set_checkpoint(checkpoint)
    node.base.links.add_incoming(parent, link_type=LinkType.CALL_WORK, link_label=link_label)
    return node.store()


@pytest.fixture
def parent(aiida_profile_clean) -> orm.WorkflowNode:
    return orm.WorkflowNode().store()


def test_a_child_never_sent_to_a_worker_is_abandoned(parent):
    child = child_of(parent, "label", ProcessState.CREATED, checkpoint=None)
    assert not can_still_run(child)
    abandon(child)
    assert child.is_killed and child.is_sealed and child.process_status == ABANDONED_STATUS


@pytest.mark.parametrize("state", [ProcessState.CREATED, ProcessState.RUNNING, ProcessState.WAITING])
def test_a_child_sent_with_its_checkpoint_is_kept_in_any_active_state(parent, state):
    """A worker may be loading it right now: marking it killed would race that worker."""
    assert can_still_run(child_of(parent, "label", state, checkpoint="state: saved"))


def test_a_terminated_child_is_kept(parent):
    assert can_still_run(child_of(parent, "label", ProcessState.FINISHED, checkpoint=None))


def excepted_as_a_worker_does(node: orm.ProcessNode) -> None:
    """What a daemon worker does with a launch task for ``node`` that has no checkpoint (aiida-core's own code)."""
    with pytest.raises(plumpy.PersistenceError) as error:
        AiiDAPersister().load_checkpoint(node.pk)
    ProcessLauncher.handle_continue_exception(node, error.value, "failed to recreate the process instance")


def test_a_child_sent_by_repair_without_its_checkpoint_never_ran_and_is_not_kept(parent):
    """`verdi process repair` sends a task for a child the step stored but never sent; a worker excepts it."""
    child = child_of(parent, "train_0", ProcessState.CREATED, checkpoint=None)
    excepted_as_a_worker_does(child)
    assert child.is_excepted and child.is_sealed
    assert never_ran(child) and not can_still_run(child)


def test_a_child_excepted_or_killed_after_it_ran_is_kept(parent):
    """It ran: its failure is the step's to handle, not a reason to run it again."""
    excepted = child_of(parent, "train_0", ProcessState.EXCEPTED, checkpoint=None)
    excepted.set_exception("ValueError: the training set is empty")
    killed = child_of(parent, "train_1", ProcessState.KILLED, checkpoint=None)
    killed.set_process_status("Killed through `verdi process kill`")
    for child in (excepted, killed):
        assert not never_ran(child) and can_still_run(child)


@pytest.mark.parametrize("before", ["stored without a state", "never sent", "excepted by a worker", "abandoned",
                                    "running"])
def test_submit_once_replaces_only_a_child_that_never_ran(parent, before):
    """Abandoned: the step was interrupted again after it marked the child killed, before the fresh one. Stored
    without a state: the worker died between aiida-core storing the node and setting its first state."""
    child = child_of(parent, "train_0", ProcessState.CREATED if before != "running" else ProcessState.RUNNING,
                     checkpoint="state: saved" if before == "running" else None)
    if before == "stored without a state":
        child.base.attributes.delete("process_state")
    if before == "excepted by a worker":
        excepted_as_a_worker_does(child)
    if before == "abandoned":
        abandon(child)
    submitted, reports = [], []
    workchain = SimpleNamespace(node=parent, report=reports.append,
                                submit=lambda process, **inputs: submitted.append(inputs) or "fresh child")
    returned = submit_once(workchain, "TrainBaseWorkChain", "train_0", seed=3)
    if before == "running":
        assert returned.pk == child.pk and not submitted
        assert reports == [f"train_0: keeping {child.process_label}<{child.pk}> from before the restart"]
        return
    assert returned == "fresh child"
    assert submitted == [{"seed": 3, "metadata": {"call_link_label": "train_0"}}]
    assert child.is_sealed and child.process_state == (ProcessState.EXCEPTED if before == "excepted by a worker" else
                                                      ProcessState.KILLED)
    assert "submitting it again" in reports[0] and f"<{child.pk}>" in reports[0]


def test_the_newest_child_with_the_link_label_is_found(parent):
    child_of(parent, "train_0", ProcessState.FINISHED, checkpoint=None)
    older = child_of(parent, "train_1", ProcessState.KILLED, checkpoint=None)
    newer = child_of(parent, "train_1", ProcessState.CREATED, checkpoint="state: saved")
    workchain = SimpleNamespace(node=parent)
    assert existing_child(workchain, "train_1").pk == newer.pk != older.pk
    assert existing_child(workchain, "md_000") is None


def calcfunction_child(parent: orm.WorkflowNode, state: ProcessState | None) -> orm.CalcFunctionNode:
    node = orm.CalcFunctionNode()
    if state is not None:
        node.set_process_state(state)
    node.base.links.add_incoming(parent, link_type=LinkType.CALL_CALC, link_label="split_into_chunks")
    return node.store()


def test_calcfunctions_left_unterminated_are_marked_excepted_and_the_rest_untouched(parent):
    """A worker killed inside a step leaves the step's calcfunction in any state, even before it had one."""
    never_started = calcfunction_child(parent, None)
    running = calcfunction_child(parent, ProcessState.RUNNING)
    finished = calcfunction_child(parent, ProcessState.FINISHED)
    workflow = child_of(parent, "label", ProcessState.RUNNING, checkpoint="state: saved")
    closed = close_interrupted_calcfunctions(parent)
    assert {node.pk for node in closed} == {never_started.pk, running.pk}
    for node in (never_started, running):
        assert node.is_excepted and node.is_sealed and node.process_status == INTERRUPTED_STATUS
    assert finished.is_finished and not finished.is_sealed
    assert workflow.process_state == ProcessState.RUNNING, "a workflow child runs on its own; it is not closed"


class WaitingWorkChain(ClosesInterruptedCalcfunctions, WorkChain):
    """A workchain with nothing to do, to be saved and loaded again as the daemon does."""


def test_a_workchain_loaded_from_its_checkpoint_closes_its_interrupted_calcfunctions(aiida_profile_clean):
    runner = get_manager().get_runner()
    workchain = runner.instantiate_process(WaitingWorkChain)
    interrupted = calcfunction_child(workchain.node, None)
    saved = plumpy.Bundle(workchain)
    assert interrupted.process_state is None
    loaded = saved.unbundle(plumpy.LoadSaveContext(runner=runner))
    assert loaded.node.pk == workchain.node.pk
    assert interrupted.is_excepted and interrupted.is_sealed
    assert any(f"<{interrupted.pk}> was interrupted" in log.message
               for log in orm.Log.collection.get_logs_for(workchain.node))
