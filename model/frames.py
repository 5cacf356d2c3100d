"""Labelled frames in one HDF5 file, column-wise: concatenated arrays plus per-frame offsets.

Layout (root attributes ``format`` = ``tace-frames``, ``version``, ``metadata`` as JSON text):

* ``offsets`` [n_frames + 1] int64: the atoms of frame i are rows ``offsets[i]:offsets[i + 1]``
  of every per-atom column;
* ``numbers`` [n_atoms] uint8, ``positions`` [n_atoms, 3] Å, ``cell`` [n_frames, 3, 3] Å,
  ``pbc`` [n_frames, 3] bool;
* labels, each only when some frame has it, NaN where a frame has none (stored labels are finite):
  ``energy`` [n_frames] eV, ``forces`` [n_atoms, 3] eV/Å, ``stress`` [n_frames, 3, 3] eV/Å^3;
* ``arrays/<name>`` other per-atom arrays (``predicted_forces`` ...) and ``info/<name>`` per-frame
  info (``label_uuid``, ``temperature`` ...), each with attribute ``kind``: ``number`` (numeric or
  bool column), ``string`` (UTF-8) or ``json`` (JSON text of any other value). When some frames
  lack the entry, ``arrays_present/<name>`` / ``info_present/<name>`` [n_frames] bool says which have it.

Reading never executes anything from the file: only numeric, bool and UTF-8 string datasets are
accepted, JSON is parsed with :func:`json.loads`, and any other HDF5 type is refused.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import h5py
import numpy as np
from ase import Atoms
from ase.calculators.singlepoint import SinglePointCalculator
from ase.stress import full_3x3_to_voigt_6_stress, voigt_6_to_full_3x3_stress

FORMAT = "tace-frames"
VERSION = 1
SUFFIXES = (".h5", ".hdf5")
LABELS = ("energy", "forces", "stress")
#: A frame whose largest force component is below this (eV/Å) holds no force to learn from (an ideal crystal, say).
NO_FORCE = 1e-6
_KINDS = ("number", "string", "json")

Source = str | Path | IO[bytes]


class FrameFormatError(ValueError):
    """A file that is not a readable frame store (wrong format, newer version, foreign types, bad shapes)."""


@dataclass
class FrameColumns:
    """The columns of a frame store; per-atom columns are concatenated over frames in order.

    ``energy`` [n_frames] eV, ``forces`` [n_atoms, 3] eV/Å, ``stress`` [n_frames, 3, 3] eV/Å^3 are
    None when no frame has them and NaN where one frame lacks them. ``arrays`` and ``info`` map a
    name to ``(values, present)``, ``present`` [n_frames] bool (None when every frame has the entry).
    """

    offsets: np.ndarray
    numbers: np.ndarray
    positions: np.ndarray
    cell: np.ndarray
    pbc: np.ndarray
    energy: np.ndarray | None = None
    forces: np.ndarray | None = None
    stress: np.ndarray | None = None
    arrays: dict[str, tuple[np.ndarray, np.ndarray | None]] = field(default_factory=dict)
    info: dict[str, tuple[list | np.ndarray, np.ndarray | None]] = field(default_factory=dict)
    metadata: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def label_counts(self) -> dict[str, int]:
        """Number of frames carrying each of energy, forces, stress."""
        counts = {}
        for key in LABELS:
            values = getattr(self, key)
            if values is None:
                counts[key] = 0
            elif key == "forces":
                counts[key] = int(self.has_forces().sum())
            else:
                counts[key] = int(np.isfinite(values.reshape(len(self), -1)).all(axis=1).sum())
        return counts

    def has_forces(self) -> np.ndarray:
        """Which frames carry forces, ``[n_frames]`` bool (atoms, and every component finite)."""
        if self.forces is None:
            return np.zeros(len(self), dtype=bool)
        bad = np.concatenate([[0], np.cumsum(~np.isfinite(self.forces).all(axis=1))])
        return (bad[self.offsets[1:]] == bad[self.offsets[:-1]]) & (np.diff(self.offsets) > 0)

    def force_free_count(self) -> int:
        """Number of frames with forces whose every component is below :data:`NO_FORCE` in magnitude."""
        labelled = self.has_forces()
        if not labelled.any():
            return 0
        nonempty = np.diff(self.offsets) > 0  # reduceat's segments are then exactly these frames
        largest = np.maximum.reduceat(np.abs(self.forces).max(axis=1), self.offsets[:-1][nonempty])
        return int((largest[labelled[nonempty]] < NO_FORCE).sum())

    def frame(self, index: int) -> Atoms:
        """Frame ``index`` as ASE Atoms, labels on a SinglePointCalculator (stress in Voigt order)."""
        start, stop = self.offsets[index], self.offsets[index + 1]
        atoms = Atoms(numbers=self.numbers[start:stop], positions=self.positions[start:stop],
                      cell=self.cell[index], pbc=self.pbc[index])
        for name, (values, present) in self.arrays.items():
            if present is None or present[index]:
                atoms.new_array(name, values[start:stop])
        for name, (values, present) in self.info.items():
            if present is None or present[index]:
                value = values[index]
                atoms.info[name] = value.item() if isinstance(value, np.generic) else value
        results = {}
        if self.energy is not None and np.isfinite(self.energy[index]):
            results["energy"] = float(self.energy[index])
        if self.forces is not None and stop > start and np.isfinite(self.forces[start:stop]).all():
            results["forces"] = self.forces[start:stop].copy()
        if self.stress is not None and np.isfinite(self.stress[index]).all():
            results["stress"] = full_3x3_to_voigt_6_stress(self.stress[index])
        if results:
            atoms.calc = SinglePointCalculator(atoms, **results)
        return atoms


def full_3x3_stress(stress: Any) -> np.ndarray:
    """A stress (or virial) ``[3, 3]`` from 9 values (row by row) or 6 in Voigt order (xx, yy, zz, yz, xz, xy)."""
    stress = np.asarray(stress, dtype=float)
    if stress.size == 9:
        return stress.reshape(3, 3)
    if stress.shape == (6,):
        return voigt_6_to_full_3x3_stress(stress)
    raise ValueError(f"a stress has 9 values or 6 (Voigt), not {stress.size}")


def frame_labels(atoms: Atoms) -> dict[str, Any]:
    """Energy (eV), forces [n_atoms, 3] (eV/Å), stress [3, 3] (eV/Å^3) of a frame, where present.

    Taken from the attached calculator's results, else from ``atoms.info`` / ``atoms.arrays``.
    """
    found: dict[str, Any] = {}
    results = atoms.calc.results if atoms.calc is not None else {}
    for key in LABELS:
        value = results.get(key, atoms.arrays.get(key) if key == "forces" else atoms.info.get(key))
        if value is not None:
            found[key] = value
    if "stress" in found:
        stress = np.asarray(found["stress"], dtype=float)
        found["stress"] = full_3x3_stress(stress)
    return found


def _checked_labels(atoms: Atoms, index: int) -> dict[str, Any]:
    labels = frame_labels(atoms)
    name = f"frame {index} ({atoms.get_chemical_formula()})"
    if "forces" in labels and np.shape(labels["forces"]) != (len(atoms), 3):
        raise ValueError(f"{name}: forces of shape {np.shape(labels['forces'])}, expected ({len(atoms)}, 3)")
    for key, value in labels.items():
        if not np.all(np.isfinite(value)):
            raise ValueError(f"{name}: {key} label is not finite")
    return labels


def _info_column(values: list, name: str) -> tuple[str, np.ndarray]:
    """(kind, column) for the present values of one info entry."""
    if all(isinstance(v, str) for v in values):
        return "string", np.array(values, dtype=object)
    arrays = [np.asarray(v) for v in values]
    if all(a.dtype.kind in "biuf" and a.shape == arrays[0].shape for a in arrays):
        return "number", np.array(arrays)
    try:
        return "json", np.array([json.dumps(v.tolist() if isinstance(v, np.ndarray) else v) for v in values], dtype=object)
    except TypeError as error:
        raise ValueError(f"info[{name!r}] cannot be stored (not a number, string, array or JSON): {error}") from error


def _array_column(values: list[np.ndarray], name: str) -> tuple[str, np.ndarray]:
    """(kind, column) for the present values of one per-atom array, concatenated over frames."""
    if all(v.dtype.kind in "US" for v in values):
        return "string", np.concatenate(values).astype(str).astype(object)
    if any(v.dtype.kind not in "biuf" or v.shape[1:] != values[0].shape[1:] for v in values):
        raise ValueError(f"arrays[{name!r}]: per-atom arrays must be numeric (or text) of one shape per atom")
    return "number", np.concatenate(values)


def _write_entries(handle: h5py.File, group: str, entries: list[dict], sizes: np.ndarray | None) -> None:
    """Write info entries (``sizes`` None: one value per frame) or per-atom arrays (``sizes``: atoms per frame)."""
    for name in sorted({name for entry in entries for name in entry}):
        present = np.array([name in entry for entry in entries])
        values = [entry[name] for entry in entries if name in entry]
        if sizes is None:
            kind, column = _info_column(values, name)
            rows = present
        else:
            kind, column = _array_column([np.asarray(v) for v in values], name)
            rows = np.repeat(present, sizes)
        if not present.all():
            full = np.empty((len(rows),) + column.shape[1:], dtype=column.dtype)
            full[...] = {"json": "null", "string": ""}.get(kind, 0)
            full[rows] = column
            column = full
        dataset = handle.create_dataset(f"{group}/{name}", data=column,
                                        dtype=column.dtype if kind == "number" else h5py.string_dtype())
        dataset.attrs["kind"] = kind
        if not present.all():
            handle.create_dataset(f"{group}_present/{name}", data=present)


def write_frames(target: Source, frames: Sequence[Atoms], metadata: dict | None = None) -> None:
    """Write ``frames`` (labels from calculators or info/arrays) to ``target`` (a path or a binary file object).

    Other per-atom arrays and info entries are kept; labels must be finite and forces [n_atoms, 3].
    A calculator's ``dipole`` result (as ASE's extxyz reader attaches it) is kept as an info entry, its
    ``born_effective_charges`` as a per-atom array of 9 values.
    """
    labels = [_checked_labels(atoms, index) for index, atoms in enumerate(frames)]
    sizes = np.array([len(atoms) for atoms in frames], dtype=np.int64)
    offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
    numbers = np.concatenate([atoms.numbers for atoms in frames]) if frames else np.zeros(0)
    if numbers.size and not (0 < numbers.min() and numbers.max() < 256):
        raise ValueError(f"atomic numbers must lie in 1..255, found {sorted(set(numbers.tolist()))}")
    with h5py.File(target, "w") as handle:
        handle.attrs.update(format=FORMAT, version=VERSION, metadata=json.dumps(metadata or {}))
        handle.create_dataset("offsets", data=offsets)
        handle.create_dataset("numbers", data=numbers.astype(np.uint8))
        handle.create_dataset("positions", data=np.concatenate([a.positions for a in frames]) if frames else np.zeros((0, 3)))
        handle.create_dataset("cell", data=np.array([a.cell[:] for a in frames]).reshape(-1, 3, 3))
        handle.create_dataset("pbc", data=np.array([a.pbc for a in frames], dtype=bool).reshape(-1, 3))
        if any("energy" in found for found in labels):
            handle.create_dataset("energy", data=[float(found.get("energy", np.nan)) for found in labels])
        if any("forces" in found for found in labels):
            forces = [np.asarray(found.get("forces", np.full((n, 3), np.nan)), dtype=float) for found, n in zip(labels, sizes, strict=True)]
            handle.create_dataset("forces", data=np.concatenate(forces))
        if any("stress" in found for found in labels):
            handle.create_dataset("stress", data=np.array([found.get("stress", np.full((3, 3), np.nan)) for found in labels], dtype=float))
        _write_entries(handle, "info", [_info_entries(atoms) for atoms in frames], None)
        excluded = {"numbers", "positions", *LABELS}
        _write_entries(handle, "arrays", [_array_entries(atoms, excluded) for atoms in frames], sizes)


def _info_entries(atoms: Atoms) -> dict:
    """``atoms.info`` without the label columns, with a calculator's dipole result where info has none."""
    results = getattr(atoms.calc, "results", {}) if atoms.calc is not None else {}
    extra = {"dipole": np.asarray(results["dipole"], dtype=float)} if "dipole" in results else {}
    return extra | {key: value for key, value in atoms.info.items() if key not in LABELS}


def _array_entries(atoms: Atoms, excluded: set[str]) -> dict:
    """``atoms.arrays`` without ``excluded``, with a calculator's Born charges ``[n_atoms, 9]`` where arrays have none."""
    results = getattr(atoms.calc, "results", {}) if atoms.calc is not None else {}
    born = results.get("born_effective_charges")
    extra = {"born_effective_charges": np.asarray(born, dtype=float).reshape(len(atoms), -1)} if born is not None else {}
    return extra | {key: value for key, value in atoms.arrays.items() if key not in excluded}


def _read_dataset(handle: h5py.File, path: str, rows: int, kind: str = "number", row_shape: tuple | None = None) -> np.ndarray | list:
    """One dataset's values, refusing any type other than numbers, bools and UTF-8 text.

    ``rows`` is the expected length; ``row_shape``, when given, the exact shape of each row.
    """
    dataset = handle.get(path)
    if not isinstance(dataset, h5py.Dataset):
        raise FrameFormatError(f"'{path}' is missing or not a dataset")
    if dataset.shape[:1] != (rows,) or (row_shape is not None and dataset.shape[1:] != row_shape):
        expected = (rows, *row_shape) if row_shape is not None else f"{rows} rows"
        raise FrameFormatError(f"'{path}' has shape {dataset.shape}, expected {expected}")
    if kind == "number":
        if dataset.dtype.kind not in "biuf":
            raise FrameFormatError(f"'{path}' holds {dataset.dtype}, expected numbers")
        return dataset[()]
    string = h5py.check_string_dtype(dataset.dtype)
    if string is None or string.encoding != "utf-8":
        raise FrameFormatError(f"'{path}' holds {dataset.dtype}, expected UTF-8 text")
    text = dataset.asstr()[()].tolist()
    if kind == "string":
        return text
    try:
        return [json.loads(value) for value in text]
    except json.JSONDecodeError as error:
        raise FrameFormatError(f"'{path}' holds text that is not JSON: {error}") from error


def _read_entries(handle: h5py.File, group: str, rows: int, n_frames: int) -> dict:
    entries = {}
    members = handle.get(group)
    if members is not None and not isinstance(members, h5py.Group):
        raise FrameFormatError(f"'{group}' must be a group")
    for name, dataset in ({} if members is None else members).items():
        kind = dataset.attrs.get("kind")
        if kind not in _KINDS:
            raise FrameFormatError(f"'{group}/{name}' has kind {kind!r}, expected one of {_KINDS}")
        values = _read_dataset(handle, f"{group}/{name}", rows, kind)
        present_path = f"{group}_present/{name}"
        present = _read_dataset(handle, present_path, n_frames).astype(bool) if present_path in handle else None
        entries[name] = (values, present)
    return entries


def read_columns(source: Source) -> FrameColumns:
    """All columns of a frame store (the fast path: no Atoms are made)."""
    try:
        handle = h5py.File(source, "r")
    except FileNotFoundError:
        raise
    except OSError as error:
        raise FrameFormatError(f"{source} is not an HDF5 file: {error}") from error
    with handle:
        found, version = handle.attrs.get("format"), handle.attrs.get("version")
        if found != FORMAT:
            raise FrameFormatError(f"{source}: format attribute is {found!r}, expected {FORMAT!r}")
        if not isinstance(version, (int, np.integer)) or not 1 <= version <= VERSION:
            raise FrameFormatError(f"{source}: format version {version}; this reader knows versions 1 to {VERSION}")
        offsets = handle.get("offsets")
        if not isinstance(offsets, h5py.Dataset) or offsets.ndim != 1 or offsets.dtype.kind not in "iu" or len(offsets) < 1:
            raise FrameFormatError(f"{source}: 'offsets' must be a one-dimensional integer dataset")
        offsets = offsets[()].astype(np.int64)
        if offsets[0] != 0 or np.any(np.diff(offsets) < 0):
            raise FrameFormatError(f"{source}: 'offsets' must start at 0 and never decrease")
        try:
            metadata = json.loads(handle.attrs.get("metadata", "{}"))
        except (TypeError, json.JSONDecodeError) as error:
            raise FrameFormatError(f"{source}: 'metadata' attribute is not JSON text: {error}") from error
        try:
            return _columns(handle, offsets, metadata)
        except FrameFormatError as error:
            raise FrameFormatError(f"{source}: {error}") from None


def _columns(handle: h5py.File, offsets: np.ndarray, metadata: dict) -> FrameColumns:
    n_frames, n_atoms = len(offsets) - 1, int(offsets[-1])
    columns = FrameColumns(
        offsets=offsets,
        numbers=_read_dataset(handle, "numbers", n_atoms, row_shape=()).astype(np.int64),
        positions=_read_dataset(handle, "positions", n_atoms, row_shape=(3,)),
        cell=_read_dataset(handle, "cell", n_frames, row_shape=(3, 3)),
        pbc=_read_dataset(handle, "pbc", n_frames, row_shape=(3,)).astype(bool),
        arrays=_read_entries(handle, "arrays", n_atoms, n_frames),
        info=_read_entries(handle, "info", n_frames, n_frames),
        metadata=metadata,
    )
    for key, rows, row_shape in (("energy", n_frames, ()), ("forces", n_atoms, (3,)), ("stress", n_frames, (3, 3))):
        if key in handle:
            setattr(columns, key, _read_dataset(handle, key, rows, row_shape=row_shape).astype(float))
    return columns


def read_frames(source: Source) -> list[Atoms]:
    """All frames of a frame store as ASE Atoms, labels on a SinglePointCalculator."""
    columns = read_columns(source)
    return [columns.frame(index) for index in range(len(columns))]


def is_frame_file(path: str | Path) -> bool:
    """Whether ``path`` names a frame store (by its suffix)."""
    return Path(path).suffix.lower() in SUFFIXES
