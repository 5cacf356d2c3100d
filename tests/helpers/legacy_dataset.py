"""Datasets for tests: labelled copper frames, and a ``tace.dataset`` as stored before the frame store (one extxyz
file, attributes without ``format``)."""

from __future__ import annotations

import io
from collections.abc import Sequence

from ase import Atoms
from ase.build import bulk
from ase.io import write
from tace_aiida.model.frames import LABELS, frame_labels

from tace_aiida.data import TrainingSetData


def extxyz_dataset(frames: Sequence[Atoms]) -> TrainingSetData:
    """An unstored dataset holding ``frames`` in ``dataset.extxyz``, as the code before the frame store wrote it."""
    node = TrainingSetData()
    node.base.repository.delete_object("frames.h5")
    handle = io.StringIO()
    write(handle, list(frames), format="extxyz")
    node.base.repository.put_object_from_bytes(handle.getvalue().encode(), "dataset.extxyz")
    node.base.attributes.delete("format")
    node.base.attributes.delete("num_force_free")
    labels = [frame_labels(atoms) for atoms in frames]
    node.base.attributes.set_many({
        "num_structures": len(frames),
        "num_atoms": sum(len(atoms) for atoms in frames),
        "elements": sorted({symbol for atoms in frames for symbol in atoms.get_chemical_symbols()}),
        "label_counts": {key: sum(key in found for found in labels) for key in LABELS},
    })
    return node


def labelled_copper(count: int, start: int = 0) -> list:
    """``count`` rattled Cu cells labelled with EMT, each with a ``label_uuid`` and ``source_frame``."""
    from ase.calculators.emt import EMT

    frames = []
    for index in range(start, start + count):
        atoms = bulk("Cu", "fcc", a=3.6) * (2, 1, 1)
        atoms.rattle(0.05, seed=index)
        atoms.calc = EMT()
        atoms.get_forces(), atoms.get_stress()
        atoms.info.update(label_uuid=f"label-{index}", source_frame=index)
        frames.append(atoms)
    return frames


def legacy_dataset(frames) -> TrainingSetData:
    """A stored dataset made the old way (one extxyz file, no ``format`` attribute)."""
    return extxyz_dataset(frames).store()
