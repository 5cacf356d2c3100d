"""Neighbour lists from matscipy for periodic structures and molecules alike (torch-free)."""

from __future__ import annotations

import numpy as np
from ase import Atoms
from matscipy.neighbours import neighbour_list


def neighbour_pairs(quantities: str, atoms: Atoms, cutoff: float | np.ndarray) -> tuple[np.ndarray, ...]:
    """matscipy's ``neighbour_list(quantities, ...)`` of ``atoms`` (``i``, ``j``, ``d``, ``S`` ...).

    ``cutoff`` in Å: one radius, or per-atom sphere radii (a pair is listed when its spheres
    overlap). Molecules (no periodic direction) get a bounding box, so that a zero, too small or
    flat cell works; a periodic structure needs a cell of non-zero volume.
    """
    if atoms.pbc.any():
        if abs(atoms.cell.volume) < 1e-9:
            raise ValueError(f"{atoms.get_chemical_formula()}: periodic structure with a singular cell {atoms.cell[:].tolist()}")
        return neighbour_list(quantities, atoms, cutoff)
    reach = float(np.max(cutoff)) * (2 if np.ndim(cutoff) else 1)
    positions = atoms.positions
    return neighbour_list(
        quantities,
        positions=positions,
        cell=np.diag(np.ptp(positions, axis=0) + 2 * reach),
        pbc=[False, False, False],
        numbers=atoms.numbers.astype(np.int32),
        cell_origin=positions.min(axis=0) - reach,
        cutoff=cutoff,
    )
