"""Submitting children so that a step interrupted by a daemon crash does not run them twice.

AiiDA checkpoints a workchain after each outline step. When the daemon dies while a step submits
its children (after some were created, before the checkpoint), the restarted daemon runs the
whole step again and, left alone, submits every child a second time: the same structures
labelled twice, the same member trained twice. :func:`submit_once` finds the children that the
interrupted attempt created, by their call link label, and keeps them:

* a child that has started (running, waiting, or terminated) is awaited instead of resubmitted;
* a child still in the ``created`` state (or with no state yet) never started, and its launch task may have died with
  the daemon: it is marked killed (a launch task that does arrive later is then ignored, AiiDA
  never continues a terminated process) and a fresh child is submitted.
"""

from __future__ import annotations

from typing import Any

from aiida import orm
from aiida.common.links import LinkType
from aiida.engine import ProcessBuilder, ProcessState, WorkChain

ABANDONED_STATUS = "abandoned: its parent's step was interrupted before this process started; the step submitted it again"


def existing_child(workchain: WorkChain, link_label: str) -> orm.ProcessNode | None:
    """The newest child of ``workchain`` called with ``link_label``, if the step was interrupted after making it."""
    links = workchain.node.base.links.get_outgoing(
        link_type=(LinkType.CALL_CALC, LinkType.CALL_WORK), link_label_filter=link_label
    ).all()
    return max((link.node for link in links), key=lambda node: node.pk, default=None)


def abandon(node: orm.ProcessNode) -> None:
    """Mark a child that never started as killed, so that nothing runs it later."""
    node.set_process_state(ProcessState.KILLED)
    node.set_process_status(ABANDONED_STATUS)
    node.seal()


def submit_once(workchain: WorkChain, process: Any, link_label: str, **inputs: Any) -> orm.ProcessNode:
    """Submit ``process`` (a class with ``inputs``, or a builder) as the child ``link_label`` of ``workchain``,
    or return the one an interrupted attempt of the same step made."""
    child = existing_child(workchain, link_label)
    if child is not None:
        if child.process_state not in (None, ProcessState.CREATED):
            workchain.report(f"{link_label}: keeping {child.process_label}<{child.pk}> from before the restart")
            return child
        abandon(child)
        workchain.report(f"{link_label}: {child.process_label}<{child.pk}> never started; submitting it again")
    if isinstance(process, ProcessBuilder):
        process.metadata.call_link_label = link_label
        return workchain.submit(process)
    metadata = {**inputs.pop("metadata", {}), "call_link_label": link_label}
    return workchain.submit(process, **inputs, metadata=metadata)
