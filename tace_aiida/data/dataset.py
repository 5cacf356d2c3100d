"""``tace.dataset``: structures with their DFT (or other) labels, as one frame store or a list of shards.

Labels are kept in eV (energy), eV/Å (forces) and eV/Å^3 (stress, 3x3), whatever code made them;
per-structure metadata (source process, MD frame, temperature, ...) lives in each frame's info.

A dataset holds its frames itself (attribute ``format`` = ``tace-frames``: one HDF5 frame store
``frames.h5`` in its repository, see :mod:`tace_aiida.model.frames`), or is made of shards
(``format`` = ``shards``: the uuids of the datasets holding its frames, in order, in attribute
``shards``), so that merging never copies frames. Datasets stored before the frame store (no
``format``) hold one extxyz file ``dataset.extxyz`` and still load.
"""

from __future__ import annotations

import io
from collections.abc import Iterable, Sequence

import numpy as np
from aiida import orm
from ase import Atoms
from ase.data import chemical_symbols
from ase.io import read, write

from tace_aiida.model.frames import FORMAT, LABELS, read_columns, read_frames, write_frames

FILENAME = "frames.h5"
EXTXYZ_FILENAME = "dataset.extxyz"
SHARDS = "shards"


class TrainingSetData(orm.Data):
    """A labelled (or not yet labelled) set of structures.

    Attributes: ``format``, ``num_structures``, ``num_atoms``, ``elements`` (sorted symbols),
    ``label_counts`` (structures carrying each of energy/forces/stress), ``num_force_free`` (structures whose
    forces all vanish, as an ideal crystal's; absent on datasets stored before it), and for a dataset made of
    shards, ``shards`` (their uuids in order).
    """

    def __init__(
        self, frames: Sequence[Atoms] | None = None, *, shards: Sequence[TrainingSetData] | None = None, **kwargs
    ) -> None:
        """Hold ``frames`` (none: an empty dataset), or be made of the frames of the datasets ``shards``."""
        super().__init__(**kwargs)
        if shards is not None:
            self.set_shards(shards)
        else:
            self.set_frames(frames or [])

    def set_frames(self, frames: Sequence[Atoms]) -> None:
        """Store ``frames`` as one frame store (labels from calculators or info/arrays; other info and arrays kept)."""
        handle = io.BytesIO()
        write_frames(handle, frames)
        columns = read_columns(io.BytesIO(handle.getvalue()))
        self.base.repository.put_object_from_bytes(handle.getvalue(), FILENAME)
        self.base.attributes.set_many(
            {
                "format": FORMAT,
                "num_structures": len(columns),
                "num_atoms": int(columns.offsets[-1]),
                "elements": sorted({chemical_symbols[z] for z in np.unique(columns.numbers)}),
                "label_counts": columns.label_counts(),
                "num_force_free": columns.force_free_count(),
            }
        )
        if SHARDS in self.base.attributes.keys():
            self.base.attributes.delete(SHARDS)

    def set_shards(self, datasets: Sequence[TrainingSetData]) -> None:
        """Be made of the frames of the stored ``datasets`` in order; no frame is copied.

        Datasets made of shards are flattened: the result refers only to datasets holding frames.
        """
        unstored = [dataset for dataset in datasets if not dataset.is_stored]
        if unstored:
            raise ValueError(f"only stored datasets can be shards; {unstored} are not stored")
        if FILENAME in self.base.repository.list_object_names():
            self.base.repository.delete_object(FILENAME)
        attributes = {
            "format": SHARDS,
            SHARDS: [uuid for dataset in datasets for uuid in dataset.shard_uuids],
            "num_structures": sum(d.num_structures for d in datasets),
            "num_atoms": sum(d.base.attributes.get("num_atoms") for d in datasets),
            "elements": sorted({symbol for d in datasets for symbol in d.elements}),
            "label_counts": {key: sum(d.label_counts[key] for d in datasets) for key in LABELS},
        }
        force_free = [d.num_force_free for d in datasets]
        if None not in force_free:
            attributes["num_force_free"] = sum(force_free)
        elif "num_force_free" in self.base.attributes.keys():
            self.base.attributes.delete("num_force_free")
        self.base.attributes.set_many(attributes)

    @property
    def format(self) -> str:
        """``tace-frames`` (holds a frame store), ``shards`` (made of shards) or ``extxyz`` (stored before shards)."""
        return self.base.attributes.get("format", "extxyz")

    @property
    def num_structures(self) -> int:
        return self.base.attributes.get("num_structures")

    @property
    def elements(self) -> list[str]:
        return self.base.attributes.get("elements")

    @property
    def label_counts(self) -> dict[str, int]:
        return self.base.attributes.get("label_counts")

    @property
    def num_force_free(self) -> int | None:
        """Structures whose forces all vanish (None: stored before this was counted)."""
        return self.base.attributes.get("num_force_free", None)

    def __len__(self) -> int:
        return self.num_structures

    @property
    def shard_uuids(self) -> list[str]:
        """The uuids of the datasets holding the frames, in order (this dataset's own when it holds them)."""
        return self.base.attributes.get(SHARDS) if self.format == SHARDS else [self.uuid]

    @property
    def shards(self) -> list[TrainingSetData]:
        """The datasets holding the frames, in order (``[self]`` when this dataset holds them)."""
        if self.format != SHARDS:
            return [self]
        uuids = self.shard_uuids
        query = orm.QueryBuilder().append(TrainingSetData, filters={"uuid": {"in": sorted(set(uuids))}})
        found = {node.uuid: node for node in query.all(flat=True)}
        missing = [uuid for uuid in uuids if uuid not in found]
        if missing:
            raise ValueError(f"dataset {self.uuid}: its shards {missing} are not in this profile")
        return [found[uuid] for uuid in uuids]

    @property
    def filename(self) -> str:
        """The repository file holding this dataset's frames (not for a dataset made of shards)."""
        names = {FORMAT: FILENAME, "extxyz": EXTXYZ_FILENAME}
        if self.format not in names:
            raise ValueError(f"dataset {self.uuid} of format {self.format!r} holds no frames itself")
        return names[self.format]

    def _own_frames(self) -> list[Atoms]:
        if self.format == "extxyz":
            text = self.base.repository.get_object_content(EXTXYZ_FILENAME, mode="r")
            return read(io.StringIO(text), index=":", format="extxyz") if text else []
        with self.base.repository.open(self.filename, mode="rb") as handle:
            return read_frames(handle)

    def get_atoms(self) -> list[Atoms]:
        """The frames as ASE Atoms; labels on a SinglePointCalculator (eV, eV/Å, eV/Å^3)."""
        return [atoms for shard in self.shards for atoms in shard._own_frames()]

    def _prepare_extxyz(self, main_file_name: str = "", **kwargs) -> tuple[bytes, dict]:
        """The frames as extxyz text (the exporter of ``verdi data tace.dataset export``)."""
        if self.format == "extxyz":
            return self.base.repository.get_object_content(EXTXYZ_FILENAME, mode="rb"), {}
        handle = io.StringIO()
        frames = self.get_atoms()
        if frames:
            write(handle, frames, format="extxyz")
        return handle.getvalue().encode(), {}

    def write_extxyz(self, path) -> None:
        """Write the frames to ``path`` as extxyz (an extxyz dataset's file is copied as it is)."""
        with open(path, "wb") as handle:
            handle.write(self._prepare_extxyz()[0])

    @classmethod
    def from_structures(cls, structures: Iterable[orm.StructureData], **info) -> TrainingSetData:
        """Unlabelled frames from StructureData; each frame's info records ``source_uuid`` and ``info``."""
        frames = []
        for structure in structures:
            atoms = structure.get_ase()
            atoms.info.update(info, source_uuid=structure.uuid)
            frames.append(atoms)
        return cls(frames)

    @classmethod
    def from_pymatgen(cls, structures: Iterable, **info) -> TrainingSetData:
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
