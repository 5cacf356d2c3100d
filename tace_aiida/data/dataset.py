"""``tace.dataset``: structures with their DFT (or other) labels, stored as one extxyz file.

Labels are kept in eV (energy), eV/Å (forces) and eV/Å^3 (stress, 3x3), whatever code made them;
per-structure metadata (source process, MD frame, temperature, ...) lives in each frame's info.
"""

from __future__ import annotations

import io
from collections import Counter
from typing import Iterable, Sequence

import numpy as np
from aiida import orm
from ase import Atoms
from ase.calculators.singlepoint import SinglePointCalculator
from ase.io import read, write
from ase.stress import full_3x3_to_voigt_6_stress

from tace_aiida.model.frames import frame_labels

FILENAME = "dataset.extxyz"
LABELS = ("energy", "forces", "stress")


def normalise_frame(atoms: Atoms) -> Atoms:
    """A copy with labels on a SinglePointCalculator (validated shapes, finite values) and no loose copies.

    Other per-atom arrays (e.g. an ensemble's ``predicted_forces``) and info entries are kept.
    """
    labels = frame_labels(atoms)
    frame = Atoms(numbers=atoms.numbers, positions=atoms.positions, cell=atoms.cell, pbc=atoms.pbc)
    frame.info = {k: v for k, v in atoms.info.items() if k not in LABELS}
    for name, values in atoms.arrays.items():
        if name not in frame.arrays and name not in LABELS:
            frame.new_array(name, values)
    if "forces" in labels and np.shape(labels["forces"]) != (len(atoms), 3):
        raise ValueError(f"{atoms.get_chemical_formula()}: forces of shape {np.shape(labels['forces'])}, expected ({len(atoms)}, 3)")
    for key, value in labels.items():
        if not np.all(np.isfinite(value)):
            raise ValueError(f"{atoms.get_chemical_formula()}: {key} label is not finite")
    if labels:
        results = dict(labels)
        if "stress" in results:
            results["stress"] = full_3x3_to_voigt_6_stress(results["stress"])
        frame.calc = SinglePointCalculator(frame, **results)
    return frame


class TrainingSetData(orm.Data):
    """A labelled (or not yet labelled) set of structures in one extxyz file.

    Attributes: ``num_structures``, ``num_atoms``, ``elements`` (sorted symbols),
    ``label_counts`` (structures carrying each of energy/forces/stress).
    """

    def __init__(self, frames: Sequence[Atoms] | None = None, **kwargs) -> None:
        super().__init__(**kwargs)
        self.set_frames(frames or [])

    def set_frames(self, frames: Sequence[Atoms]) -> None:
        normalised = [normalise_frame(atoms) for atoms in frames]
        handle = io.StringIO()
        if normalised:
            write(handle, normalised, format="extxyz")
        self.base.repository.put_object_from_bytes(handle.getvalue().encode(), FILENAME)
        counts = Counter(key for atoms in normalised for key in frame_labels(atoms))
        self.base.attributes.set_many(
            {
                "num_structures": len(normalised),
                "num_atoms": int(sum(len(a) for a in normalised)),
                "elements": sorted({s for a in normalised for s in a.get_chemical_symbols()}),
                "label_counts": {key: counts.get(key, 0) for key in LABELS},
            }
        )

    @property
    def num_structures(self) -> int:
        return self.base.attributes.get("num_structures")

    @property
    def elements(self) -> list[str]:
        return self.base.attributes.get("elements")

    @property
    def label_counts(self) -> dict[str, int]:
        return self.base.attributes.get("label_counts")

    def __len__(self) -> int:
        return self.num_structures

    def get_atoms(self) -> list[Atoms]:
        """The frames as ASE Atoms; labels on a SinglePointCalculator (eV, eV/Å, eV/Å^3)."""
        text = self.base.repository.get_object_content(FILENAME, mode="r")
        return read(io.StringIO(text), index=":", format="extxyz") if text else []

    def write_extxyz(self, path) -> None:
        """Copy the stored file to ``path`` as it is."""
        with open(path, "wb") as handle:
            handle.write(self.base.repository.get_object_content(FILENAME, mode="rb"))

    @classmethod
    def from_structures(cls, structures: Iterable[orm.StructureData], **info) -> "TrainingSetData":
        """Unlabelled frames from StructureData; each frame's info records ``source_uuid`` and ``info``."""
        frames = []
        for structure in structures:
            atoms = structure.get_ase()
            atoms.info.update(info, source_uuid=structure.uuid)
            frames.append(atoms)
        return cls(frames)

    @classmethod
    def from_pymatgen(cls, structures: Iterable, **info) -> "TrainingSetData":
        """Unlabelled frames from pymatgen ``Structure`` or ``Molecule`` objects."""
        from pymatgen.io.ase import AseAtomsAdaptor

        frames = [AseAtomsAdaptor.get_atoms(s) for s in structures]
        for atoms in frames:
            atoms.info.update(info)
        return cls(frames)

    def get_structures(self) -> list[orm.StructureData]:
        """The frames as (unstored) StructureData."""
        return [orm.StructureData(ase=atoms) for atoms in self.get_atoms()]

    def get_pymatgen(self) -> list:
        """The frames as pymatgen ``Structure`` (periodic) or ``Molecule`` objects."""
        from pymatgen.io.ase import AseAtomsAdaptor

        return [
            AseAtomsAdaptor.get_structure(a) if a.pbc.any() else AseAtomsAdaptor.get_molecule(a)
            for a in self.get_atoms()
        ]
