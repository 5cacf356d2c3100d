"""Data pipeline: ASE Atoms -> graph tensors (neighbour lists from :mod:`.neighbours`) -> batches.

A graph is a dict of tensors:

* ``positions`` [n_atoms, 3] Å, ``species`` [n_atoms] index into the model's species,
  ``edge_index`` [2, n_edges] (sender j, receiver i, for every j within ``r_max`` of i),
  ``shifts`` [n_edges, 3] integer cell shifts (the sender's image is ``r_j + shifts @ cell``),
  ``cell`` [1, 3, 3] Å, ``batch`` [n_atoms] (all zero for one structure);
* labels, where present: ``energy`` [1] eV, ``forces`` [n_atoms, 3] eV/Å, ``stress`` [1, 3, 3]
  eV/Å^3, each with a mask ``has_energy`` / ``has_forces`` / ``has_stress`` [1]; dipole,
  polarizability and Born effective charges likewise (:mod:`.keys` lists every entry).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from ase import Atoms
from ase.data import chemical_symbols
from ase.stress import voigt_6_to_full_3x3_stress

from .keys import (
    BATCH,
    BORN_CHARGES,
    CELL,
    DIPOLE,
    EDGE_INDEX,
    ENERGY,
    FIDELITY,
    FORCES,
    HAS_BORN_CHARGES,
    HAS_DIPOLE,
    HAS_ENERGY,
    HAS_FORCES,
    HAS_POLARIZABILITY,
    HAS_STRESS,
    NUM_ATOMS,
    PER_ATOM,
    PER_GRAPH,
    POLARIZABILITY,
    POSITIONS,
    SHIFTS,
    SPARSE_LABELS,
    SPECIES,
    STRESS,
)
from .neighbours import neighbour_pairs
from .structure_conditions import conditions
from .validation import check_structure

Tensor = torch.Tensor


@dataclass(frozen=True)
class LabelKeys:
    """Where labels live in ``Atoms.info`` / ``Atoms.arrays`` (or the attached calculator's results)."""

    energy: str = "energy"
    forces: str = "forces"
    stress: str = "stress"
    dipole: str = "dipole"
    polarizability: str = "polarizability"
    born_charges: str = "born_effective_charges"


def edges_within_cutoff(atoms: Atoms, r_max: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(senders, receivers, integer shifts) of all pairs closer than ``r_max`` Å, self-pairs excluded."""
    receivers, senders, shifts = neighbour_pairs("ijS", atoms, r_max)
    return senders, receivers, shifts


def read_label(atoms: Atoms, key: str, per_atom: bool) -> np.ndarray | None:
    """A label from ``atoms.arrays``/``atoms.info``, else from the attached calculator's results."""
    store = atoms.arrays if per_atom else atoms.info
    results = getattr(atoms.calc, "results", {}) if atoms.calc is not None else {}
    value = store[key] if key in store else results.get(key)
    if value is None:
        return None
    try:
        return np.asarray(value, dtype=float)
    except (TypeError, ValueError):
        raise ValueError(f"its {key!r} label is not numeric: {value!r}") from None


def checked_label(value: np.ndarray, key: str, shapes: Sequence[tuple[int, ...]], per_atom: bool = False) -> np.ndarray:
    """``value`` if it has one of ``shapes`` and is finite; else an error naming ``key`` and the entry."""
    if value.shape not in shapes:
        raise ValueError(f"its {key!r} label has shape {value.shape}, expected {' or '.join(map(str, shapes))}")
    bad = np.argwhere(~np.isfinite(value))
    if len(bad):
        if per_atom:
            raise ValueError(f"its {key!r} label is not finite at atom {bad[0][0]}: {value[bad[0][0]].tolist()}")
        raise ValueError(f"its {key!r} label is not finite: {value.tolist()}")
    return value


def species_indices(atoms: Atoms, atomic_numbers: Sequence[int]) -> np.ndarray:
    """Index of each atom's element in ``atomic_numbers``; a clear error for an unknown element."""
    lookup = {z: i for i, z in enumerate(atomic_numbers)}
    unknown = sorted(set(int(z) for z in atoms.numbers) - set(lookup))
    if unknown:
        names = ", ".join(chemical_symbols[z] for z in unknown)
        known = ", ".join(chemical_symbols[z] for z in atomic_numbers)
        raise ValueError(f"{atoms.get_chemical_formula()} contains {names}, which the model was not trained on (it knows {known})")
    return np.array([lookup[int(z)] for z in atoms.numbers], dtype=np.int64)


def periodic_rows(atoms: Atoms) -> np.ndarray:
    """The cell ``[3, 3]`` (Å, vectors as rows) with zero rows along non-periodic directions, as
    :data:`.keys.CELL` stores it: a molecule's box, which may be any size, is no part of its graph."""
    return atoms.cell[:] * atoms.pbc[:, None]


def atoms_to_graph(
    atoms: Atoms,
    atomic_numbers: Sequence[int],
    r_max: float,
    keys: LabelKeys | None = None,
    dtype: torch.dtype | None = None,
) -> dict[str, Tensor]:
    """One structure as a graph dict; labels are read when ``keys`` is given.

    A stress label is read only for cells periodic in all three directions: the stress of a
    molecule or a slab (periodic in one or two) depends on its arbitrary vacuum, so is no label.
    Dipole (3 values, e Å) and polarizability (9 values or 3 x 3, Å^3) labels are read for molecules only;
    Born effective charges (per atom 9 values, row-major, or 3 x 3, e; ``Z_A[j, k] = dF_Ak / dE_j``) for
    any structure, since they are derivatives that a periodic cell has as well.
    """
    dtype = dtype or torch.get_default_dtype()
    senders, receivers, shifts = edges_within_cutoff(atoms, r_max)
    n_atoms = len(atoms)
    graph = {
        POSITIONS: torch.tensor(atoms.positions, dtype=dtype),
        SPECIES: torch.from_numpy(species_indices(atoms, atomic_numbers)),
        EDGE_INDEX: torch.from_numpy(np.stack([senders, receivers]).astype(np.int64)),
        SHIFTS: torch.tensor(shifts, dtype=dtype),
        CELL: torch.tensor(periodic_rows(atoms), dtype=dtype).unsqueeze(0),
        BATCH: torch.zeros(n_atoms, dtype=torch.long),
    }
    for key, value in conditions(atoms).items():
        graph[key] = torch.tensor(value, dtype=torch.long if key == FIDELITY else dtype).reshape(1, *value.shape)
    if keys is None:
        return graph
    energy = read_label(atoms, keys.energy, per_atom=False)
    forces = read_label(atoms, keys.forces, per_atom=True)
    stress = read_label(atoms, keys.stress, per_atom=False) if atoms.pbc.all() else None
    if energy is not None:
        energy = checked_label(energy, keys.energy, [(), (1,)])
    if forces is not None:
        forces = checked_label(forces, keys.forces, [(n_atoms, 3)], per_atom=True)
    if stress is not None:
        stress = checked_label(stress, keys.stress, [(6,), (3, 3)])
        stress = voigt_6_to_full_3x3_stress(stress) if stress.shape == (6,) else stress
    graph[ENERGY] = torch.tensor([0.0 if energy is None else energy.item()], dtype=dtype)
    graph[FORCES] = torch.tensor(np.zeros((n_atoms, 3)) if forces is None else forces, dtype=dtype)
    graph[STRESS] = torch.tensor(np.zeros((3, 3)) if stress is None else stress, dtype=dtype).unsqueeze(0)
    graph[HAS_ENERGY] = torch.tensor([energy is not None], dtype=dtype)
    graph[HAS_FORCES] = torch.tensor([forces is not None], dtype=dtype)
    graph[HAS_STRESS] = torch.tensor([stress is not None], dtype=dtype)
    molecule = not atoms.pbc.any()
    dipole = read_label(atoms, keys.dipole, per_atom=False) if molecule else None
    polarizability = read_label(atoms, keys.polarizability, per_atom=False) if molecule else None
    if dipole is not None:
        dipole = checked_label(dipole, keys.dipole, [(3,)])
    if polarizability is not None:
        polarizability = checked_label(polarizability, keys.polarizability, [(9,), (3, 3)]).reshape(3, 3)
    graph[DIPOLE] = torch.tensor(np.zeros(3) if dipole is None else dipole, dtype=dtype).unsqueeze(0)
    graph[POLARIZABILITY] = torch.tensor(np.zeros((3, 3)) if polarizability is None else polarizability, dtype=dtype).unsqueeze(0)
    graph[HAS_DIPOLE] = torch.tensor([dipole is not None], dtype=dtype)
    graph[HAS_POLARIZABILITY] = torch.tensor([polarizability is not None], dtype=dtype)
    born = read_label(atoms, keys.born_charges, per_atom=True)
    if born is not None:
        born = checked_label(born, keys.born_charges, [(n_atoms, 9), (n_atoms, 3, 3)], per_atom=True).reshape(n_atoms, 3, 3)
        graph[BORN_CHARGES] = torch.tensor(born, dtype=dtype)
    graph[HAS_BORN_CHARGES] = torch.tensor([born is not None], dtype=dtype)
    return graph


def frame_graph(
    atoms: Atoms,
    source: str,
    index: int,
    atomic_numbers: Sequence[int],
    r_max: float,
    keys: LabelKeys | None = None,
    dtype: torch.dtype | None = None,
) -> dict[str, Tensor]:
    """:func:`atoms_to_graph` after :func:`check_structure`; an error names ``source`` (the file),
    the frame's ``index`` and its formula."""
    try:
        check_structure(atoms)
        return atoms_to_graph(atoms, atomic_numbers, r_max, keys, dtype)
    except ValueError as error:
        raise ValueError(f"{source}, frame {index} ({atoms.get_chemical_formula()}): {error}") from None


def frames_to_graphs(
    frames: Sequence[Atoms],
    source: str,
    atomic_numbers: Sequence[int],
    r_max: float,
    keys: LabelKeys | None = None,
    dtype: torch.dtype | None = None,
) -> list[dict[str, Tensor]]:
    """:func:`frame_graph` of every frame."""
    return [frame_graph(atoms, source, index, atomic_numbers, r_max, keys, dtype) for index, atoms in enumerate(frames)]


def collate(graphs: Sequence[dict[str, Tensor]]) -> dict[str, Tensor]:
    """Concatenate graphs into one batch; edge indices are offset, ``batch`` numbers the graphs.

    A sparse label (:data:`.keys.SPARSE_LABELS`) that only some graphs carry is filled with zeros for the others."""
    atom_counts = torch.tensor([len(g[POSITIONS]) for g in graphs])
    offsets = torch.cumsum(atom_counts, 0) - atom_counts
    batch = {
        EDGE_INDEX: torch.cat([g[EDGE_INDEX] + offset for g, offset in zip(graphs, offsets, strict=True)], dim=1),
        SHIFTS: torch.cat([g[SHIFTS] for g in graphs]),
        BATCH: torch.repeat_interleave(torch.arange(len(graphs)), atom_counts),
        NUM_ATOMS: atom_counts,
    }
    for key in PER_GRAPH + PER_ATOM:
        if all(key in g for g in graphs):
            batch[key] = torch.cat([g[key] for g in graphs])
    for key in SPARSE_LABELS:
        template = next((g[key] for g in graphs if key in g), None)
        if template is not None and key not in batch:
            batch[key] = torch.cat([g[key] if key in g else template.new_zeros((int(n), *template.shape[1:]))
                                    for g, n in zip(graphs, atom_counts, strict=True)])
    return batch


def to_device(batch: dict[str, Tensor], device: torch.device | str) -> dict[str, Tensor]:
    return {key: value.to(device) for key, value in batch.items()}


def is_device(name: str) -> bool:
    """Whether ``name`` is ``auto`` or a device name torch parses (``cpu``, ``cuda:1`` ...), present or not."""
    if name == "auto":
        return True
    try:
        torch.device(name)
    except RuntimeError:
        return False
    return True


def resolve_device(name: str) -> torch.device:
    """``auto`` -> ``cuda`` when a GPU is visible, else ``cpu``; any other name as given."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)
