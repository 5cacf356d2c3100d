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
    symmetry leaves its force: 0 on a site whose point group has no invariant vector (e.g. every fcc site).

    A force on an atom must be unchanged by every operation that maps the atom onto itself, so it lies in the null
    space of the stacked ``R - 1`` of those operations (Cartesian rotations ``R``). Atoms of one orbit have conjugate
    site groups, so one atom per orbit is analysed.
    """
    if not all(atoms.pbc):
        raise ValueError(f"{atoms.get_chemical_formula()}: the site symmetry of forces needs a cell periodic in "
                         f"three directions, not pbc {atoms.pbc.tolist()}")
    structure = AseAtomsAdaptor.get_structure(atoms)
    symmetry = SpacegroupAnalyzer(structure, symprec=symprec).get_symmetry_dataset()
    to_cartesian = structure.lattice.matrix.T  # [3, 3], columns the cell vectors (Å)
    deviations = to_cartesian @ symmetry.rotations @ np.linalg.inv(to_cartesian) - np.eye(3)  # [n_ops, 3, 3]
    directions = {}
    for atom in np.unique(symmetry.equivalent_atoms):
        position = structure.frac_coords[atom]
        offsets = symmetry.rotations @ position + symmetry.translations - position  # [n_ops, 3], fractional
        offsets -= np.round(offsets)
        fixed = np.linalg.norm(offsets @ to_cartesian.T, axis=1) < 10 * symprec
        directions[atom] = 3 - int(np.linalg.matrix_rank(deviations[fixed].reshape(-1, 3), tol=1e-6))
    return [directions[atom] for atom in symmetry.equivalent_atoms]


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
