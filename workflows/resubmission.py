"""Submitting children so that a step interrupted by a daemon crash does not run them twice.

AiiDA checkpoints a workchain after each outline step. When the daemon dies while a step submits
its children (after some were created, before the checkpoint), the restarted daemon runs the
whole step again and, left alone, submits every child a second time: the same structures
labelled twice, the same member trained twice. :func:`submit_once` finds the children that the
interrupted attempt created, by their call link label, and keeps them:

* a child with a checkpoint is kept and awaited, whatever its state: its launch task was sent (AiiDA sends it only
  after the first checkpoint), so a worker runs it, or, if the broker lost the task with the dying daemon,
  ``verdi process repair`` sends it again, as for any other process of a crashed daemon;
* a child without a checkpoint was stored but never sent to the broker, so nothing can ever run it: it is
  marked killed and a fresh child is submitted;
* such a child that ``verdi process repair`` sent all the same is excepted by the worker that gets it (aiida-core
  cannot load a process without its checkpoint): it never ran, so a fresh child is submitted in its place too,
  as when the step is interrupted again after it marked the child killed and before it submitted the fresh one.

A child that was sent is never marked killed here: a worker may be loading it at that very moment, and would
overwrite the killed state and run it beside its replacement.

aiida-core's ``BaseRestartWorkChain.run_process`` submits its job with ``self.submit`` and the call link label
``iteration_NN``; a step run again from the checkpoint has the same number. :class:`KeepsJobsOfInterruptedSteps`
routes that submission through :func:`reusable_child`, so a restart workchain interrupted in that step neither runs its
job twice nor leaves it ``Created`` for ever.

A calcfunction runs inside its parent's step, in the same worker, so a worker that dies mid-way leaves it
unterminated for ever, and the repeated step runs a new one. :class:`ClosesInterruptedCalcfunctions` marks such
leftovers excepted when the parent is loaded from its checkpoint, so that no process of a finished run stays active.
"""

from __future__ import annotations

from typing import Any

from aiida import orm
from aiida.common.links import LinkType
from aiida.engine import ProcessBuilder, ProcessState, WorkChain

INTERRUPTED_STATUS = "interrupted: the daemon worker running it died; its parent's step ran again"
ABANDONED_STATUS = "abandoned: its parent's step was interrupted before this process was sent to a worker; the step submitted it again"
#: What aiida-core's persister raises, and a worker stores as the process's exception, when a launch task reaches a
#: process that has no checkpoint (``aiida.engine.persistence.AiiDAPersister.load_checkpoint``).
NO_CHECKPOINT_ERROR = "does not have a saved checkpoint"


def existing_child(workchain: WorkChain, link_label: str) -> orm.ProcessNode | None:
    """The newest child of ``workchain`` called with ``link_label``, if the step was interrupted after making it."""
    links = workchain.node.base.links.get_outgoing(
        link_type=(LinkType.CALL_CALC, LinkType.CALL_WORK), link_label_filter=link_label
    ).all()
    return max((link.node for link in links), key=lambda node: node.pk, default=None)


def never_ran(node: orm.ProcessNode) -> bool:
    """Whether ``node`` ended without running a step: marked killed by :func:`abandon`, or excepted because a worker
    got its launch task before it had a checkpoint (``verdi process repair`` sends one for every process left
    active by a crashed daemon)."""
    if node.is_killed:
        return node.process_status == ABANDONED_STATUS
    return node.is_excepted and NO_CHECKPOINT_ERROR in (node.exception or "")


def can_still_run(node: orm.ProcessNode) -> bool:
    """Whether ``node`` ran or a worker can run it: it has the checkpoint its launch task is sent with, or it has
    terminated after it started."""
    if node.checkpoint is not None:
        return True
    return node.is_terminated and not never_ran(node)


def abandon(node: orm.ProcessNode) -> None:
    """Mark a child that never started as killed, so that nothing runs it later."""
    node.set_process_state(ProcessState.KILLED)
    node.set_process_status(ABANDONED_STATUS)
    node.seal()


def reusable_child(workchain: WorkChain, link_label: str) -> orm.ProcessNode | None:
    """The child ``link_label`` that an interrupted attempt of the step made, if a worker runs it or ran it; None
    when there is none, or when it never ran (it is then marked killed, unless it already ended)."""
    child = existing_child(workchain, link_label)
    if child is None:
        return None
    if can_still_run(child):
        workchain.report(f"{link_label}: keeping {child.process_label}<{child.pk}> from before the restart")
        return child
    state = child.process_state.value if child.process_state is not None else "stored without a process state"
    if not child.is_terminated:
        abandon(child)
    workchain.report(f"{link_label}: {child.process_label}<{child.pk}> never ran (it was {state}, never sent to a "
                     "worker with its checkpoint); submitting it again")
    return None


def submit_once(workchain: WorkChain, process: Any, link_label: str, **inputs: Any) -> orm.ProcessNode:
    """Submit ``process`` (a class with ``inputs``, or a builder) as the child ``link_label`` of ``workchain``,
    or return the one an interrupted attempt of the same step made (:func:`reusable_child`)."""
    child = reusable_child(workchain, link_label)
    if child is not None:
        return child
    if isinstance(process, ProcessBuilder):
        process.metadata.call_link_label = link_label
        return workchain.submit(process)
    metadata = {**inputs.pop("metadata", {}), "call_link_label": link_label}
    return workchain.submit(process, **inputs, metadata=metadata)


def close_interrupted_calcfunctions(node: orm.WorkflowNode) -> list[orm.CalcFunctionNode]:
    """Mark excepted and seal the calcfunctions called by ``node`` that never ended, and return them.

    Only right for a workchain that is not running a step: then none of its calcfunctions can still be running.
    """
    interrupted = [child for child in node.called
                   if isinstance(child, orm.CalcFunctionNode) and not child.is_terminated]
    for child in interrupted:
        child.set_process_state(ProcessState.EXCEPTED)
        child.set_process_status(INTERRUPTED_STATUS)
        child.seal()
    return interrupted


class KeepsJobsOfInterruptedSteps:
    """Mixin for a :class:`~aiida.engine.BaseRestartWorkChain`: the job of a ``run_process`` step run again after a
    daemon crash is the one the interrupted attempt made, if it was sent to a worker; else it is marked killed and
    submitted again (:func:`reusable_child`)."""

    def submit(self, process: Any, inputs: dict[str, Any] | None = None, **kwargs: Any) -> orm.ProcessNode:
        label = (kwargs.get("metadata") or {}).get("call_link_label")
        if label == f"iteration_{self.ctx.iteration:02d}":
            self._drop_handler_entry_of_an_interrupted_attempt()
        child = reusable_child(self, label) if label else None
        return child if child is not None else super().submit(process, inputs, **kwargs)

    def _drop_handler_entry_of_an_interrupted_attempt(self) -> None:
        """``run_process`` adds one entry per iteration to the handlers extra after it submits; an attempt interrupted
        after that left this iteration's entry already there, and the step run again would add a second one."""
        extra = self._considered_handlers_extra
        entries = self.node.base.extras.get(extra, [])
        if len(entries) >= self.ctx.iteration:
            self.node.base.extras.set(extra, entries[: self.ctx.iteration - 1])


class ClosesInterruptedCalcfunctions:
    """Mixin for a :class:`~aiida.engine.WorkChain`: when loaded from its checkpoint (after a daemon worker died),
    the calcfunctions that worker was running are marked excepted; the step that called them runs again."""

    def load_instance_state(self, saved_state, load_context):
        super().load_instance_state(saved_state, load_context)
        for child in close_interrupted_calcfunctions(self.node):
            self.report(f"{child.process_label}<{child.pk}> was interrupted when its worker died: marked excepted; "
                        "the step that called it runs again")
