"""Neighbour lists of periodic structures and molecules alike (torch-free).

vesin computes the lists with one cutoff for cells periodic in all three directions or none
(2-3 times faster than matscipy on 32-atom cells); matscipy covers mixed periodicity (slabs,
wires) and per-atom sphere radii.
"""

from __future__ import annotations

import numpy as np
from ase import Atoms
from matscipy.neighbours import neighbour_list
from vesin import NeighborList

#: The quantities vesin computes as matscipy does: indices, integer cell shifts, distances.
VESIN_QUANTITIES = frozenset("ijSd")


def neighbour_pairs(quantities: str, atoms: Atoms, cutoff: float | np.ndarray) -> tuple[np.ndarray, ...]:
    """matscipy's ``neighbour_list(quantities, ...)`` of ``atoms`` (``i``, ``j``, ``d``, ``S`` ...).

    ``cutoff`` in Å: one radius, or per-atom sphere radii (a pair is listed when its spheres
    overlap). Molecules (no periodic direction) get a bounding box, so that a zero, too small or
    flat cell works; a periodic structure needs a cell of non-zero volume.
    """
    if atoms.pbc.any() and abs(atoms.cell.volume) < 1e-9:
        raise ValueError(f"{atoms.get_chemical_formula()}: periodic structure with a singular cell {atoms.cell[:].tolist()}")
    return cell_pairs(quantities, atoms.positions, atoms.cell[:], atoms.pbc, cutoff)


def cell_pairs(quantities: str, positions: np.ndarray, cell: np.ndarray, pbc: np.ndarray,
               cutoff: float | np.ndarray) -> tuple[np.ndarray, ...]:
    """:func:`neighbour_pairs` of positions [n_atoms, 3] Å in ``cell`` [3, 3] Å with ``pbc`` [3] bool;
    a periodic ``cell`` must have a non-zero volume."""
    if np.ndim(cutoff) == 0 and (pbc.all() or not pbc.any()) and set(quantities) <= VESIN_QUANTITIES:
        return vesin_pairs(quantities, positions, cell, bool(pbc.all()), float(cutoff))
    if pbc.any():
        return neighbour_list(quantities, positions=positions, cell=cell, pbc=pbc, cutoff=cutoff)
    reach = float(np.max(cutoff)) * (2 if np.ndim(cutoff) else 1)
    return neighbour_list(
        quantities,
        positions=positions,
        cell=np.diag(np.ptp(positions, axis=0) + 2 * reach),
        pbc=[False, False, False],
        cell_origin=positions.min(axis=0) - reach,
        cutoff=cutoff,
    )


def vesin_pairs(quantities: str, positions: np.ndarray, cell: np.ndarray, periodic: bool, cutoff: float) -> tuple[np.ndarray, ...]:
    """vesin's full neighbour list: indices as int64, shifts [n_pairs, 3] int32, distances in Å."""
    box = cell if periodic else np.zeros((3, 3))
    found = NeighborList(cutoff, full_list=True).compute(positions, box, periodic, quantities)
    return tuple(values.astype(np.int64) if name in "ij" else values for name, values in zip(quantities, found, strict=True))
