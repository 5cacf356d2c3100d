"""Statistics of a training set that fix a potential's reference energies, scale and shift."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from . import keys

Tensor = torch.Tensor


def species_counts(graphs: Sequence[dict[str, Tensor]], num_species: int) -> np.ndarray:
    """``[n_graphs, n_species]`` number of atoms of each species in each structure."""
    return np.stack([np.bincount(g[keys.SPECIES].numpy(), minlength=num_species) for g in graphs]).astype(float)


def fit_atomic_energies(graphs: Sequence[dict[str, Tensor]], num_species: int) -> list[float]:
    """Per-species reference energies E0 (eV) by least squares, ``E ~ sum_z n_z E0_z``.

    Uses the structures that have an energy label. With too few distinct compositions to fix every
    E0 the minimum-norm solution is returned (the shift then absorbs the rest).
    """
    labelled = [g for g in graphs if bool(g[keys.HAS_ENERGY])]
    if not labelled:
        raise ValueError("cannot fit atomic reference energies: no structure has an energy label")
    counts = species_counts(labelled, num_species)
    energies = np.array([float(g[keys.ENERGY]) for g in labelled])
    solution, *_ = np.linalg.lstsq(counts, energies, rcond=None)
    return solution.tolist()


def interaction_energy_statistics(
    graphs: Sequence[dict[str, Tensor]], atomic_energies: Sequence[float]
) -> tuple[float, float]:
    """(shift, scale): mean interaction energy per atom (eV) and RMS force component (eV/Å).

    The interaction energy is the label minus the reference energies. When no forces are labelled
    the scale is the standard deviation of the interaction energy per atom (1.0 if that is zero).
    """
    e0 = np.asarray(atomic_energies)
    per_atom = [
        (float(g[keys.ENERGY]) - e0[g[keys.SPECIES].numpy()].sum()) / len(g[keys.SPECIES])
        for g in graphs
        if bool(g[keys.HAS_ENERGY])
    ]
    shift = float(np.mean(per_atom)) if per_atom else 0.0
    forces = [g[keys.FORCES].numpy() for g in graphs if bool(g[keys.HAS_FORCES])]
    if forces:
        scale = float(np.sqrt(np.mean(np.concatenate(forces) ** 2)))
    else:
        scale = float(np.std(per_atom)) if len(per_atom) > 1 else 0.0
    return shift, scale if scale > 0 else 1.0


def average_num_neighbors(graphs: Sequence[dict[str, Tensor]]) -> float:
    """Mean number of neighbours within the cutoff per atom."""
    edges = sum(g[keys.EDGE_INDEX].shape[1] for g in graphs)
    atoms = sum(len(g[keys.SPECIES]) for g in graphs)
    return max(edges / atoms, 1.0)
