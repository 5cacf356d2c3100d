"""Deduplication of variants: exact repeats by a content hash, symmetry-equivalent ones by pymatgen's StructureMatcher.

The content hash covers atomic numbers, positions rounded to ``DECIMALS`` Å, the cell rounded the same way, and
pbc. StructureMatcher compares only structures in the same bucket: same composition, same number of atoms, and the
same per-site nearest-neighbour distances rounded to 0.01 Å (an invariant of symmetry-equivalent structures, so
the matcher never compares structures that cannot match; two equivalent structures whose distances round to
different sides of a 0.01 Å boundary are kept both). Molecules (not fully periodic) are deduplicated by hash only.
"""

from __future__ import annotations

import hashlib
from collections import defaultdict
from dataclasses import dataclass, field

import numpy as np
from ase import Atoms
from pymatgen.analysis.structure_matcher import StructureMatcher
from pymatgen.io.ase import AseAtomsAdaptor

DECIMALS = 6
HASH_PREFIX = "sha256:"
EXACT, SYMMETRY = "exact_repeat", "symmetry_equivalent"
# Tight tolerances: a 0.01 Å displacement or a 0.1 % strain makes a different structure; no rescaling of volumes.
MATCHER = {"ltol": 1e-3, "stol": 1e-3, "angle_tol": 0.05, "primitive_cell": False, "scale": False,
           "attempt_supercell": False}


def content_hash(atoms: Atoms, decimals: int = DECIMALS) -> str:
    """``sha256:<hex>`` of the atomic numbers, positions and cell rounded to ``decimals`` Å, and pbc."""
    digest = hashlib.sha256()
    digest.update(np.asarray(atoms.numbers, dtype=np.int64).tobytes())
    for array in (atoms.positions, atoms.cell.array):
        digest.update((np.round(np.asarray(array, dtype=np.float64), decimals) + 0.0).tobytes())
    digest.update(np.asarray(atoms.pbc, dtype=bool).tobytes())
    return HASH_PREFIX + digest.hexdigest()


@dataclass
class Deduplicated:
    """The kept variants (indices into the input list, in order) and the dropped ones with their reasons."""

    kept: list[int]
    dropped: dict[int, str] = field(default_factory=dict)

    def counts(self) -> dict[str, int]:
        """Dropped variants counted by reason (``exact_repeat``, ``symmetry_equivalent``)."""
        return {reason: sum(1 for why in self.dropped.values() if why == reason) for reason in (EXACT, SYMMETRY)}


def _bucket(atoms: Atoms) -> tuple:
    """Composition, size and rounded nearest-neighbour distances: equal for symmetry-equivalent structures."""
    structure = AseAtomsAdaptor.get_structure(atoms)
    distances = structure.distance_matrix + np.diag(np.full(len(structure), np.inf))
    nearest = np.sort(distances.min(axis=1)) if len(structure) > 1 else np.zeros(1)
    return structure.composition.formula, len(structure), tuple(np.round(nearest, 2))


def deduplicate(frames: list[Atoms], hashes: list[str], symmetry: bool = True) -> Deduplicated:
    """Drop exact repeats (same ``hashes``), then, with ``symmetry``, periodic variants StructureMatcher finds
    equivalent to an earlier kept one. The first of each group is kept."""
    seen, unique = set(), []
    result = Deduplicated(kept=[])
    for index, key in enumerate(hashes):
        if key in seen:
            result.dropped[index] = EXACT
        else:
            seen.add(key)
            unique.append(index)
    if not symmetry:
        result.kept = unique
        return result
    buckets: dict[tuple, list[int]] = defaultdict(list)
    for index in unique:
        if frames[index].pbc.all():
            buckets[_bucket(frames[index])].append(index)
    matcher = StructureMatcher(**MATCHER)
    for members in buckets.values():
        if len(members) < 2:
            continue
        structures = [AseAtomsAdaptor.get_structure(frames[index]) for index in members]
        position = {id(structure): index for structure, index in zip(structures, members, strict=True)}
        for group in matcher.group_structures(structures):
            indices = sorted(position[id(structure)] for structure in group)
            result.dropped.update(dict.fromkeys(indices[1:], SYMMETRY))
    result.kept = [index for index in unique if index not in result.dropped]
    return result
