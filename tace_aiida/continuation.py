"""What a new active-learning run takes from an ended one: its dataset and its ensemble.

A run that finished (or stopped early) has them as outputs. A killed or excepted run has no outputs, but its graph
holds everything it made: the last dataset it merged and the members of its last trained iteration, which is where
``tace-aiida learn --continue-from`` picks it up.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from aiida import orm
from aiida.common.links import LinkType

TRAINING_LINK = re.compile(r"iteration_(\d+)_train_\d+")
ITERATION_LINK = re.compile(r"iteration_(\d+)_")


@dataclass(frozen=True)
class Continuation:
    """The ``dataset`` and ``initial_ensemble`` of the continuing run; ``note`` says where they were found in the
    graph of a run that ended without outputs (None when they are its outputs)."""

    dataset: orm.Data
    ensemble: dict[str, orm.Data]
    note: str | None = None


def continuation_of(run: orm.WorkflowNode) -> Continuation:
    """The dataset and ensemble of the ended loop ``run``: its outputs, or what its graph holds where it has none
    (killed, excepted, or stopped before an ensemble trained); ValueError when it has no dataset at all."""
    if "dataset" in run.outputs and "ensemble" in run.outputs:
        return Continuation(run.outputs.dataset, dict(run.outputs.ensemble))
    ended = f"the run is {run.process_state.value}" + (f" (exit status {run.exit_status}: {run.exit_message})"
                                                       if run.exit_status else "")
    dataset = run.outputs.dataset if "dataset" in run.outputs else last_dataset(run)
    if dataset is None:
        raise ValueError(f"{ended} and labelled nothing to continue from")
    iteration, members = last_ensemble(run, members_needed(run))
    if iteration is not None:
        trained = f"the {len(members)} members trained in iteration {iteration}"
    elif members:
        trained = f"the {len(members)} members it started from (no iteration trained enough members)"
    else:
        trained = "no ensemble (no iteration trained enough members): the members train from scratch"
    note = (f"{ended}; continuing from the last dataset it made, {type(dataset).__name__}<{dataset.pk}> "
            f"({dataset.num_structures} structures), and {trained}")
    return Continuation(dataset, {f"member_{index}": member for index, member in enumerate(members)}, note)


def last_dataset(run: orm.WorkflowNode) -> orm.Data | None:
    """The training set as ``run`` last had it: the result of its last dataset merge, else the labels of its initial
    structures, else its ``dataset`` input (None: none of these)."""
    merged = [link.node for link in run.base.links.get_outgoing(link_type=LinkType.CALL_CALC).all()
              if link.node.process_label == "merge_datasets" and link.node.is_finished_ok]
    if merged:
        return max(merged, key=lambda node: node.ctime).outputs.result
    initial = run.base.links.get_outgoing(link_label_filter="label_initial").all()
    if initial and initial[0].node.is_finished_ok and "dataset" in initial[0].node.outputs:
        return initial[0].node.outputs.dataset
    return run.inputs.dataset if "dataset" in run.inputs else None


def last_ensemble(run: orm.WorkflowNode, needed: int) -> tuple[int | None, list[orm.Data]]:
    """(iteration, potentials) of the last iteration of ``run`` in which at least ``needed`` members trained, in
    member order; (None, the run's ``initial_ensemble``) when no iteration did."""
    by_iteration: dict[int, list[tuple[str, orm.Data]]] = {}
    for link in run.base.links.get_outgoing(link_type=LinkType.CALL_WORK).all():
        match = TRAINING_LINK.fullmatch(link.link_label)
        if match and link.node.is_finished_ok and "potential" in link.node.outputs:
            by_iteration.setdefault(int(match.group(1)), []).append((link.link_label, link.node.outputs.potential))
    complete = [iteration for iteration, members in by_iteration.items() if len(members) >= needed]
    if not complete:
        return None, list(run.inputs.initial_ensemble.values()) if "initial_ensemble" in run.inputs else []
    iteration = max(complete)
    members = sorted(by_iteration[iteration], key=lambda pair: int(pair[0].rsplit("_", 1)[1]))
    return iteration, [potential for _, potential in members]


def members_needed(run: orm.WorkflowNode) -> int:
    """How many members the loop needs to go on (its ``stopping.min_members``, at most its ``ensemble_size``)."""
    from tace_aiida.workflows.decisions import required_members
    from tace_aiida.workflows.settings import StoppingSettings

    stopping = StoppingSettings.from_dict(run.inputs.stopping.get_dict(), owner="stopping")
    return required_members(stopping, run.inputs.ensemble_size.value)


def progress_of(run: orm.WorkflowNode) -> str:
    """How far the loop ``run`` has come, from its graph: ``iteration 2, 5 structures in its dataset so far``."""
    iterations = [int(match.group(1)) for link in run.base.links.get_outgoing().all()
                  if (match := ITERATION_LINK.match(link.link_label))]
    dataset = last_dataset(run)
    where = f"iteration {max(iterations)}" if iterations else "labelling its initial structures"
    size = f", {dataset.num_structures} structures in its dataset so far" if dataset is not None else ""
    return where + size
