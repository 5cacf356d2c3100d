"""How far a potential is from E(3) equivariance on given structures (for approximate fast paths)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from ase import Atoms
from scipy.spatial.transform import Rotation

from .data import atoms_to_graph, collate
from .potential import CartesianTensorPotential


def rotation_errors(model: CartesianTensorPotential, frames: Sequence[Atoms], rotations: int = 4) -> tuple[float, float]:
    """Largest change of the energy (relative to |E|) and of the forces (relative to the largest |F|)
    when each of ``frames`` is rotated, or rotated and reflected (every other map), ``rotations`` times.

    The model is evaluated in its own dtype; an exactly equivariant float64 model gives about 1e-14.
    """
    dtype = next(model.parameters()).dtype
    species = list(model.config.atomic_numbers)

    def evaluate(atoms: Atoms) -> tuple[float, np.ndarray]:
        outputs = model(collate([atoms_to_graph(atoms, species, model.config.r_max, dtype=dtype)]))
        return outputs.energy.item(), outputs.forces.detach().cpu().numpy()

    worst_energy = worst_forces = 0.0
    for atoms in frames:
        energy, forces = evaluate(atoms)
        for seed in range(rotations):
            matrix = Rotation.random(random_state=seed).as_matrix() * (-1) ** seed
            moved = atoms.copy()
            moved.positions = atoms.positions @ matrix.T
            moved.cell = atoms.cell[:] @ matrix.T
            moved_energy, moved_forces = evaluate(moved)
            worst_energy = max(worst_energy, abs(moved_energy - energy) / abs(energy))
            worst_forces = max(worst_forces, np.abs(moved_forces - forces @ matrix.T).max() / np.abs(forces).max())
    return worst_energy, worst_forces
