"""Calcfunctions that build training sets, so their growth is recorded in the provenance graph."""

from __future__ import annotations

from aiida import orm
from aiida.engine import calcfunction

from tace_aiida.data import TrainingSetData
from tace_aiida.model.structure_conditions import condition_info


@calcfunction
def merge_datasets(**datasets: TrainingSetData) -> TrainingSetData:
    """One training set of the frames of all inputs, in the order of their (sorted) link labels.

    No frame is copied: the result is made of the inputs' shards (a merged input contributes its
    shards, so a chain of merges refers to its labelled batches, not to nested merges). Each frame
    keeps its metadata (``label_uuid`` of the process that labelled it, ``source_uuid``).
    """
    return TrainingSetData(shards=[datasets[label] for label in sorted(datasets)])


@calcfunction
def structures_to_dataset(conditions: orm.Dict | None = None, **structures: orm.StructureData) -> TrainingSetData:
    """Unlabelled frames from StructureData inputs; each frame's info records its ``source_uuid`` and, from
    ``conditions`` ({structure label: {charge, spin, fidelity, electric_field}}), its conditions."""
    of_label = conditions.get_dict() if conditions is not None else {}
    frames = []
    for label in sorted(structures):
        atoms = structures[label].get_ase()
        atoms.info.update(source_uuid=structures[label].uuid, **condition_info(of_label.get(label, {})))
        frames.append(atoms)
    return TrainingSetData(frames)
