"""Which children of an interrupted step are kept after a daemon restart, on generated nodes (fast)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from aiida import orm
from aiida.common.links import LinkType
from aiida.engine import ProcessState
from tace_aiida.workflows.resubmission import ABANDONED_STATUS, abandon, can_still_run, existing_child


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


def test_the_newest_child_with_the_link_label_is_found(parent):
    child_of(parent, "train_0", ProcessState.FINISHED, checkpoint=None)
    older = child_of(parent, "train_1", ProcessState.KILLED, checkpoint=None)
    newer = child_of(parent, "train_1", ProcessState.CREATED, checkpoint="state: saved")
    workchain = SimpleNamespace(node=parent)
    assert existing_child(workchain, "train_1").pk == newer.pk != older.pk
    assert existing_child(workchain, "md_000") is None
