"""Forces a crystal's symmetry forbids: an atom whose site symmetry leaves no direction unchanged feels no force.

An ideal crystal read from a CIF or POSCAR (fcc, hcp, rock salt, diamond, ...) has every atom on such a site, so
its DFT forces are zero by symmetry and labels of it teach a potential nothing about forces: members trained on them
agree that forces vanish everywhere, and their spread never finds what they miss.
"""

from __future__ import annotations

import numpy as np
from ase import Atoms
from pymatgen.io.ase import AseAtomsAdaptor
from pymatgen.symmetry.analyzer import SpacegroupAnalyzer, SymmetryUndeterminedError

#: Symmetry tolerance (Å) of the analysis: displacements smaller than this count as the ideal site.
SYMPREC = 1e-3


def force_directions(atoms: Atoms, symprec: float = SYMPREC) -> list[int]:
    """Per atom of a cell periodic in three directions, how many independent directions (0-3) the crystal's
    symmetry leaves its force: 0 on a site whose point group has no invariant vector (e.g. every fcc site)."""
    if not all(atoms.pbc):
        raise ValueError(f"{atoms.get_chemical_formula()}: the site symmetry of forces needs a cell periodic in "
                         f"three directions, not pbc {atoms.pbc.tolist()}")
    structure = AseAtomsAdaptor.get_structure(atoms)
    fractional = structure.frac_coords
    constraints: list[list[np.ndarray]] = [[] for _ in fractional]
    for operation in SpacegroupAnalyzer(structure, symprec=symprec).get_symmetry_operations(cartesian=False):
        images = operation.operate_multi(fractional)
        offsets = images - fractional
        fixed = np.linalg.norm(structure.lattice.get_cartesian_coords(offsets - np.round(offsets)), axis=1) < 10 * symprec
        rotation = structure.lattice.matrix.T @ operation.rotation_matrix @ np.linalg.inv(structure.lattice.matrix.T)
        for atom in np.flatnonzero(fixed):
            constraints[atom].append(rotation - np.eye(3))
    return [3 - int(np.linalg.matrix_rank(np.vstack(rows), tol=1e-6)) if rows else 3 for rows in constraints]


def forces_vanish_by_symmetry(atoms: Atoms, symprec: float = SYMPREC) -> bool:
    """Whether every atom of ``atoms`` sits on a site where symmetry forbids a force (False for a structure that
    is not periodic in three directions, whose molecules are not analysed, and where spglib finds no symmetry, as
    for overlapping atoms)."""
    if not all(atoms.pbc):
        return False
    try:
        return not any(force_directions(atoms, symprec))
    except SymmetryUndeterminedError:
        return False
