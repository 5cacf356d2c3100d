"""Graphs straight from the columns of an HDF5 frame store (:mod:`.frames`), edges cached on disk.

:func:`store_graphs` gives, for every frame, what :func:`.data.frame_graph` gives for it as ASE
Atoms: the same keys, dtypes and values, and the same set of edges (listed in the neighbour
list's order for the frame), the same errors (naming the file, the frame and its formula). No
Atoms are made: positions, cells, species and labels are checked over all frames at once, and
each frame's tensors are views into one tensor per key.

Edges depend only on the store's content and ``r_max``, so they are cached in one HDF5 file per
(content digest, r_max) in a folder (:func:`cache_directory`): later builds of the same shard,
under any name (every ensemble member, every iteration of the active-learning loop), read them
instead of computing neighbour lists. A cache file is used only when its format, content digest,
r_max, bounds and checksum agree; anything else is computed again and the file rewritten. It
holds about 5 bytes per edge (uncompressed, so that reading it costs next to nothing).
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, fields
from pathlib import Path

import h5py
import numpy as np
import torch
from ase.data import covalent_radii
from ase.stress import full_3x3_to_voigt_6_stress, voigt_6_to_full_3x3_stress

from .data import LabelKeys, frame_graph
from .frames import LABELS, FrameColumns
from .keys import (
    BATCH,
    BORN_CHARGES,
    CELL,
    CONDITIONS,
    DIPOLE,
    EDGE_INDEX,
    ELECTRIC_FIELD,
    ENERGY,
    FIDELITY,
    FORCES,
    HAS_BORN_CHARGES,
    HAS_DIPOLE,
    HAS_ENERGY,
    HAS_FORCES,
    HAS_POLARIZABILITY,
    HAS_STRESS,
    POLARIZABILITY,
    POSITIONS,
    SHIFTS,
    SPECIES,
    SPIN_MULTIPLICITY,
    STRESS,
    TOTAL_CHARGE,
)
from .neighbours import cell_pairs
from .validation import MIN_VOLUME_PER_ATOM, OVERLAP_FRACTION

logger = logging.getLogger(__name__)
Tensor = torch.Tensor

#: Environment variable naming the cache folder (``off`` switches the cache off).
CACHE_ENV = "TACE_GRAPH_CACHE"
CACHE_OFF = "off"
CACHE_FORMAT = "tace-graph-edges"
CACHE_VERSION = 1

#: The dtypes of cached integers, smallest first.
INTEGER_DTYPES = (np.uint8, np.int8, np.uint16, np.int16, np.int32, np.int64)

#: Labels with one row per frame: energy [n_frames], stress [n_frames, 3, 3], the masks [n_frames].
PER_FRAME_LABELS = (ENERGY, STRESS, HAS_ENERGY, HAS_FORCES, HAS_STRESS, DIPOLE, POLARIZABILITY, HAS_DIPOLE,
                    HAS_POLARIZABILITY, HAS_BORN_CHARGES)

#: Relative margin of the column-wise checks: a frame this near a limit is checked as Atoms.
MARGIN = 1e-9


@dataclass
class Edges:
    """Edges of every frame of a store; frame f owns rows ``offsets[f]:offsets[f + 1]``.

    ``offsets`` [n_frames + 1]; ``pairs`` [2 n_edges] holds each frame's senders then its receivers
    (atom indices within the frame), so that frame f's ``edge_index`` [2, n_f] is the contiguous
    block ``2 offsets[f]:2 offsets[f + 1]``; ``shifts`` [n_edges, 3] integer cell shifts (the sender's image is ``r_j + shifts @ cell``);
    ``nearest`` [n_frames] the least ratio of an edge's length to the sum of its atoms' covalent
    radii (inf for a frame without edges), for the overlap check.
    """

    offsets: np.ndarray
    pairs: np.ndarray
    shifts: np.ndarray
    nearest: np.ndarray

    def arrays(self) -> tuple[np.ndarray, ...]:
        return tuple(getattr(self, f.name) for f in fields(self))

    def checksum(self) -> str:
        """SHA-256 (first 32 hex digits) of every array's bytes."""
        digest = hashlib.sha256()
        for values in self.arrays():
            digest.update(np.ascontiguousarray(values).data)
        return digest.hexdigest()[:32]


def cache_directory(setting: str | None = None) -> Path | None:
    """The edge cache's folder: ``setting``, else ``$TACE_GRAPH_CACHE``, else the user's cache
    (``$XDG_CACHE_HOME`` or ``~/.cache``) ``/tace-aiida/graphs``; None (no cache) for ``off`` or empty."""
    value = setting if setting is not None else os.environ.get(CACHE_ENV)
    if value is None:
        return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "tace-aiida" / "graphs"
    if value.strip().lower() in ("", CACHE_OFF):
        return None
    return Path(value).expanduser()


def file_digest(path: str | Path) -> str:
    """SHA-256 digest (its first 32 hex digits) of the file's bytes."""
    with open(path, "rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()[:32]


def cache_file(directory: Path, digest: str, r_max: float) -> Path:
    return directory / f"{digest}-r_max-{float(r_max)!r}.h5"


def store_graphs(
    path: str | Path,
    columns: FrameColumns,
    atomic_numbers: Sequence[int],
    r_max: float,
    keys: LabelKeys | None = None,
    dtype: torch.dtype | None = None,
    cache_dir: Path | None = None,
) -> list[dict[str, Tensor]]:
    """The graph of every frame of the store at ``path`` (read as ``columns``), ``r_max`` in Å;
    edges from the cache in ``cache_dir`` when it holds them (None: no cache)."""
    edges = cached_edges(path, columns, r_max, cache_dir)
    return columns_to_graphs(columns, str(path), atomic_numbers, r_max, edges, keys, dtype)


def cached_edges(path: str | Path, columns: FrameColumns, r_max: float, cache_dir: Path | None) -> Edges:
    """The edges of every frame: read from the cache when it holds them, else computed (and cached)."""
    if cache_dir is None:
        return compute_edges(columns, r_max)
    digest = file_digest(path)
    target = cache_file(cache_dir, digest, r_max)
    edges = load_edges(target, digest, np.diff(columns.offsets), r_max)
    if edges is None:
        edges = compute_edges(columns, r_max)
        save_edges(target, edges, digest, r_max)
    return edges


def buildable(columns: FrameColumns) -> np.ndarray:
    """[n_frames] bool: frames with atoms, finite positions and, if periodic, a cell of at least
    :data:`.validation.MIN_VOLUME_PER_ATOM` Å^3 per atom (the others fail ``check_structure``)."""
    sizes = np.diff(columns.offsets)
    finite = per_frame_all(np.isfinite(columns.positions).all(axis=1), columns.offsets)
    volume = np.abs(np.linalg.det(columns.cell)) if len(columns) else np.zeros(0)
    roomy = ~columns.pbc.any(axis=1) | (volume >= MIN_VOLUME_PER_ATOM * sizes * (1 + MARGIN))
    return (sizes > 0) & finite & roomy


def compute_edges(columns: FrameColumns, r_max: float) -> Edges:
    """Neighbour lists (:func:`.neighbours.cell_pairs`) of every :func:`buildable` frame; none for the others."""
    radii = np.take(covalent_radii, columns.numbers, mode="clip")
    none = (np.zeros(0, np.int64), np.zeros((0, 3), np.int64), np.inf)
    found = [none] + [
        frame_edges(columns.positions[start:stop], radii[start:stop], columns.cell[index], columns.pbc[index], r_max)
        if ok else none
        for index, (start, stop, ok) in enumerate(zip(columns.offsets[:-1], columns.offsets[1:], buildable(columns), strict=True))
    ]
    counts = np.array([len(block) // 2 for block, _, _ in found[1:]], dtype=np.int64)
    pairs = np.concatenate([block for block, _, _ in found])
    shifts = np.concatenate([shifts for _, shifts, _ in found])
    nearest = np.array([ratio for _, _, ratio in found[1:]], dtype=float)
    return Edges(np.concatenate([[0], np.cumsum(counts)]), compact(pairs), compact(shifts), nearest)


def frame_edges(positions: np.ndarray, radii: np.ndarray, cell: np.ndarray, pbc: np.ndarray,
                r_max: float) -> tuple[np.ndarray, np.ndarray, float]:
    """(senders then receivers [2 n_edges], shifts [n_edges, 3], least ratio of an edge's length to
    the sum of its atoms' ``radii`` [n_atoms] Å) of one frame's edges within ``r_max`` Å."""
    receivers, senders, shifts, distances = cell_pairs("ijSd", positions, cell, pbc, r_max)
    ratios = distances / (radii[senders] + radii[receivers])
    return np.concatenate([senders, receivers]), shifts, float(ratios.min()) if len(ratios) else np.inf


def compact(values: np.ndarray) -> np.ndarray:
    """Integers in the smallest dtype holding them (uint8 for atom indices of frames of up to 256 atoms)."""
    low, high = (int(values.min()), int(values.max())) if values.size else (0, 0)
    dtype = next(dtype for dtype in INTEGER_DTYPES if np.iinfo(dtype).min <= low and high <= np.iinfo(dtype).max)
    return values.astype(dtype)


def load_edges(path: Path, digest: str, sizes: np.ndarray, r_max: float) -> Edges | None:
    """The edges cached in ``path`` for the store of content ``digest`` (frames of ``sizes`` atoms)
    at ``r_max`` Å; None when the file is missing, unreadable, truncated or foreign, or its bounds
    or checksum disagree."""
    if not path.is_file():
        return None
    try:
        with h5py.File(path, "r") as handle:
            attributes = dict(handle.attrs)
            edges = Edges(*(handle[f.name][()] for f in fields(Edges)))
    except (OSError, KeyError, TypeError, ValueError) as error:
        logger.warning("graph edge cache %s is unreadable (%s); computing the edges again", path, error)
        return None
    expected = identity(digest, r_max)
    if (not within_bounds(edges, sizes) or any(str(attributes.get(key)) != str(value) for key, value in expected.items())
            or str(attributes.get("checksum")) != edges.checksum()):
        logger.warning("graph edge cache %s does not match its frames; computing the edges again", path)
        return None
    return edges


def within_bounds(edges: Edges, sizes: np.ndarray) -> bool:
    """Whether ``edges`` fit frames of ``sizes`` atoms: offsets, shapes, dtypes, atom indices."""
    offsets, pairs, shifts, nearest = edges.arrays()
    if any(values.dtype.kind not in "iu" for values in (offsets, pairs, shifts)) or nearest.dtype.kind != "f":
        return False
    if offsets.shape != (len(sizes) + 1,) or offsets[0] != 0 or np.any(np.diff(offsets) < 0):
        return False
    n_edges = int(offsets[-1])
    if pairs.shape != (2 * n_edges,) or shifts.shape != (n_edges, 3) or nearest.shape != sizes.shape:
        return False
    return bool(np.all(pairs < np.repeat(sizes, 2 * np.diff(offsets))) and np.all(pairs >= 0))


def identity(digest: str, r_max: float) -> dict:
    """The attributes that tie a cache file to its format, its store's content and ``r_max``."""
    return {"format": CACHE_FORMAT, "version": CACHE_VERSION, "source": digest, "r_max": float(r_max)}


def save_edges(path: Path, edges: Edges, digest: str, r_max: float) -> None:
    """Write ``edges`` to ``path`` through a temporary file and a rename; warn when the folder is not writable."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
        os.close(handle)
        try:
            with h5py.File(temporary, "w") as store:
                store.attrs.update(identity(digest, r_max), checksum=edges.checksum())
                for f in fields(Edges):
                    store.create_dataset(f.name, data=getattr(edges, f.name))
            os.replace(temporary, path)
        finally:
            Path(temporary).unlink(missing_ok=True)
    except OSError as error:
        warnings.warn(f"graph edges not cached in {path.parent} ({error}); the next build computes them again", stacklevel=2)


def per_frame_all(flags: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """[n_frames] bool: whether every row of each frame is set (rows ``offsets[f]:offsets[f + 1]``)."""
    failed = np.concatenate([[0], np.cumsum(~flags)])
    return failed[offsets[1:]] == failed[offsets[:-1]]


def overlap_reached(numbers: np.ndarray, r_max: float) -> bool:
    """Whether edges within ``r_max`` Å hold every pair the overlap check of ``check_structure``
    could flag among atoms of ``numbers`` (all of which have a covalent radius)."""
    if len(numbers) == 0:
        return True
    return bool(numbers.max() < len(covalent_radii)
                and 2 * OVERLAP_FRACTION * covalent_radii[numbers].max() * (1 + MARGIN) < r_max)


@dataclass
class Label:
    """One label of every frame: ``values`` float rows per frame (or per atom), ``present`` [n_frames] bool."""

    values: np.ndarray | None
    present: np.ndarray


def result_present(columns: FrameColumns, key: str) -> np.ndarray:
    """[n_frames] bool: frames whose label column ``key`` is finite (as :meth:`FrameColumns.frame` attaches it)."""
    values = getattr(columns, key)
    if key == "forces":
        return per_frame_all(np.isfinite(values).all(axis=1), columns.offsets) & (np.diff(columns.offsets) > 0)
    return np.isfinite(values.reshape(len(columns), -1)).all(axis=1)


def read_label(columns: FrameColumns, key: str, per_atom: bool) -> Label | None:
    """Label ``key`` of every frame as :func:`.data.read_label` reads it from the frame's Atoms (an
    entry of ``arrays``/``info``, else the label column); None when it is not readable column-wise."""
    stored = (columns.arrays if per_atom else columns.info).get(key)
    column = getattr(columns, key) if key in LABELS else None
    if per_atom and key in ("numbers", "positions"):
        return None
    if stored is not None:
        values, present = stored
        if not isinstance(values, np.ndarray) or (present is not None and not present.all() and column is not None):
            return None
        return Label(values.astype(float), np.ones(len(columns), bool) if present is None else present)
    if column is None:
        return Label(None, np.zeros(len(columns), bool))
    if (key == "forces") != per_atom:
        return None
    if key == "stress":
        column = voigt_6_to_full_3x3_stress(full_3x3_to_voigt_6_stress(column))
    return Label(column, result_present(columns, key))


def label_suspects(label: Label, shapes: Sequence[tuple[int, ...]], offsets: np.ndarray | None = None) -> np.ndarray:
    """[n_frames] bool: frames whose label has none of ``shapes`` (per row) or is not finite;
    ``offsets`` for a per-atom label."""
    if label.values is None:
        return np.zeros(len(label.present), bool)
    if label.values.shape[1:] not in shapes:
        return label.present.copy()
    finite = np.isfinite(label.values.reshape(len(label.values), -1)).all(axis=1)
    return label.present & ~(finite if offsets is None else per_frame_all(finite, offsets))


def label_tensors(columns: FrameColumns, keys: LabelKeys, dtype: torch.dtype) -> tuple[dict[str, Tensor], np.ndarray] | None:
    """Labels of every frame as tensors over all frames (zero where absent; Born charges ``[n, 3, 3]`` over the
    atoms of the frames that have them only) with their masks, and
    [n_frames] bool the frames whose labels :func:`.data.atoms_to_graph` refuses; None when some
    label is not readable column-wise."""
    energy = read_label(columns, keys.energy, per_atom=False)
    forces = read_label(columns, keys.forces, per_atom=True)
    stress = read_label(columns, keys.stress, per_atom=False)
    if energy is None or forces is None or stress is None:
        return None
    dipole = read_label(columns, keys.dipole, per_atom=False)
    polarizability = read_label(columns, keys.polarizability, per_atom=False)
    born = read_label(columns, keys.born_charges, per_atom=True)
    if dipole is None or polarizability is None or born is None:
        return None
    stress.present &= columns.pbc.all(axis=1)
    molecules = ~columns.pbc.any(axis=1)
    dipole.present &= molecules
    polarizability.present &= molecules
    suspects = (label_suspects(energy, [(), (1,)]) | label_suspects(forces, [(3,)], columns.offsets)
                | label_suspects(stress, [(6,), (3, 3)]) | label_suspects(dipole, [(3,)])
                | label_suspects(polarizability, [(9,), (3, 3)]) | label_suspects(born, [(9,), (3, 3)], columns.offsets))
    n_frames, n_atoms = len(columns), int(columns.offsets[-1])
    atom_present = np.repeat(forces.present, np.diff(columns.offsets))
    stress_values = stress.values
    if stress_values is not None and stress_values.shape[1:] == (6,):
        stress_values = voigt_6_to_full_3x3_stress(stress_values)
    tensors = {
        ENERGY: masked(energy.values, energy.present, (n_frames,)),
        FORCES: masked(forces.values, atom_present, (n_atoms, 3)),
        STRESS: masked(stress_values, stress.present, (n_frames, 3, 3)),
        HAS_ENERGY: energy.present,
        HAS_FORCES: forces.present,
        HAS_STRESS: stress.present,
        DIPOLE: masked(dipole.values, dipole.present, (n_frames, 3)),
        POLARIZABILITY: masked(polarizability.values, polarizability.present, (n_frames, 3, 3)),
        HAS_DIPOLE: dipole.present,
        HAS_POLARIZABILITY: polarizability.present,
        HAS_BORN_CHARGES: born.present,
    }
    if born.present.any():
        labelled_atoms = np.repeat(born.present, np.diff(columns.offsets))
        tensors[BORN_CHARGES] = masked(born.values, labelled_atoms, (n_atoms, 3, 3))[labelled_atoms]
    return {key: torch.tensor(values, dtype=dtype) for key, values in tensors.items()}, suspects


#: info entry -> (condition key, value when absent), as :func:`.data.conditions` reads them.
CONDITION_ENTRIES = {"charge": (TOTAL_CHARGE, 0.0), "spin": (SPIN_MULTIPLICITY, 1.0), "fidelity": (FIDELITY, 0),
                     "electric_field": (ELECTRIC_FIELD, np.zeros(3))}


def condition_tensors(columns: FrameColumns, dtype: torch.dtype) -> tuple[dict[str, Tensor], np.ndarray] | None:
    """The conditions of every frame as tensors over all frames, and [n_frames] bool the frames whose
    entries :func:`.data.conditions` may refuse (converted one by one); None when an entry is not numeric."""
    tensors, unusual = {}, np.zeros(len(columns), bool)
    for entry, (key, default) in CONDITION_ENTRIES.items():
        shape = (len(columns), *np.shape(default))
        values = np.broadcast_to(np.asarray(default, dtype=float), shape).copy()
        stored = columns.info.get(entry)
        if stored is not None:
            found, present = stored
            if not isinstance(found, np.ndarray) or found.shape[1:] != shape[1:]:
                return None
            present = np.ones(len(columns), bool) if present is None else present
            values[present] = found[present]
        rows = values.reshape(len(columns), -1)
        unusual |= ~np.isfinite(rows).all(axis=1)
        if entry == "spin":
            unusual |= ~(values >= 1)
        if entry == "fidelity":
            unusual |= (values < 0) | (values != np.round(values))
        tensors[key] = torch.tensor(np.where(np.isfinite(values), values, 0.0), dtype=torch.long if key == FIDELITY else dtype)
    return tensors, unusual


def masked(values: np.ndarray | None, present: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """``values`` reshaped to ``shape`` where ``present`` (per row), 0 elsewhere (and where suspect)."""
    if values is None or values.size != np.prod(shape):
        return np.zeros(shape)
    values = values.reshape(shape)
    return np.where(present.reshape((-1,) + (1,) * (len(shape) - 1)) & np.isfinite(values), values, 0.0)


def species_lookup(atomic_numbers: Sequence[int]) -> np.ndarray:
    """[256] index of each atomic number in ``atomic_numbers``, -1 for the others."""
    lookup = np.full(256, -1, dtype=np.int64)
    lookup[list(atomic_numbers)] = np.arange(len(atomic_numbers))
    return lookup


def columns_to_graphs(
    columns: FrameColumns,
    source: str,
    atomic_numbers: Sequence[int],
    r_max: float,
    edges: Edges,
    keys: LabelKeys | None = None,
    dtype: torch.dtype | None = None,
) -> list[dict[str, Tensor]]:
    """The graph of every frame of ``columns`` (``source`` names the file in errors) from its ``edges``.

    Frames that a column-wise check flags are built from their Atoms by :func:`.data.frame_graph`,
    which raises the error naming the frame (or, for a frame only near a limit, gives its graph).
    Every frame goes that way when a label is stored in a form the columns do not cover or when
    ``r_max`` does not reach the overlap check's radii.
    """
    dtype = dtype or torch.get_default_dtype()
    species = species_lookup(atomic_numbers)[columns.numbers]
    labels = label_tensors(columns, keys, dtype) if keys is not None else ({}, np.zeros(len(columns), bool))
    conditions = condition_tensors(columns, dtype)
    if labels is None or conditions is None or not overlap_reached(columns.numbers, r_max):
        return [frame_graph(columns.frame(index), source, index, atomic_numbers, r_max, keys, dtype)
                for index in range(len(columns))]
    label_values, suspects = labels
    condition_values, unusual = conditions
    label_values = condition_values | label_values
    suspects = suspects | unusual | ~buildable(columns) | ~per_frame_all(species >= 0, columns.offsets)
    suspects |= edges.nearest < OVERLAP_FRACTION * (1 + MARGIN)
    graphs = graph_views(columns, edges, species, label_values, dtype)
    for index in np.flatnonzero(suspects):
        graphs[index] = frame_graph(columns.frame(index), source, int(index), atomic_numbers, r_max, keys, dtype)
    return graphs


def graph_views(columns: FrameColumns, edges: Edges, species: np.ndarray, labels: dict[str, Tensor],
                dtype: torch.dtype) -> list[dict[str, Tensor]]:
    """One graph dict per frame whose tensors are views into one tensor per key."""
    sizes = np.diff(columns.offsets).tolist()
    counts = np.diff(edges.offsets)
    per_atom = {
        POSITIONS: torch.tensor(columns.positions, dtype=dtype),
        SPECIES: torch.from_numpy(species),
        BATCH: torch.zeros(len(species), dtype=torch.long),
        FORCES: labels.get(FORCES),
    }
    per_frame = {CELL: torch.tensor(columns.cell * columns.pbc[..., None], dtype=dtype)}
    per_frame |= {key: labels[key] for key in (*CONDITIONS, *PER_FRAME_LABELS) if key in labels}
    parts = {key: values.split(sizes) for key, values in per_atom.items() if values is not None}
    parts |= {key: values.split(1) for key, values in per_frame.items()}
    pairs = torch.from_numpy(edges.pairs.astype(np.int64))
    parts[EDGE_INDEX] = [block.view(2, -1) for block in pairs.split((2 * counts).tolist())]
    parts[SHIFTS] = torch.from_numpy(edges.shifts).to(dtype).split(counts.tolist())
    order = [POSITIONS, SPECIES, EDGE_INDEX, SHIFTS, CELL, BATCH, *CONDITIONS, ENERGY, FORCES, STRESS, HAS_ENERGY, HAS_FORCES, HAS_STRESS,
             DIPOLE, POLARIZABILITY, HAS_DIPOLE, HAS_POLARIZABILITY, HAS_BORN_CHARGES]
    names = [key for key in order if key in parts]
    graphs = [dict(zip(names, values, strict=True)) for values in zip(*(parts[key] for key in names), strict=True)]
    if BORN_CHARGES in labels:
        labelled = labels[HAS_BORN_CHARGES].bool().tolist()
        rows = iter(labels[BORN_CHARGES].split([size for size, flag in zip(sizes, labelled, strict=True) if flag]))
        for graph, flag in zip(graphs, labelled, strict=True):
            if flag:
                graph[BORN_CHARGES] = next(rows)
    return graphs
