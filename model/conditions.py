"""External conditions of a structure as model inputs (universal embeddings).

Per-structure scalars enter every atom's rank-0 channels before the first layer: the total charge
(e), the spin multiplicity (as ``multiplicity - 1``, 0 for a singlet) through one learned vector of
channel weights each, and a fidelity label (an integer, one level of theory per value) through a
learned vector per level. An external electric field (V/Å, a rank-1 tensor) enters the rank-1
channels, scaled by learned per-species, per-channel weights, so it rotates with the structure and
equivariance holds with the field as an input. A charged structure in a field also gets the exact
energy ``-Q F·c`` of its charge at its centroid (:func:`ion_field_energy`), so that it is pushed by ``Q F``.
With the dipole taken as ``-dE/dF``, :func:`field_response` gives the polarizability and the Born
effective charges as second derivatives of the same energy.

Weights may carry leading member axes (:mod:`.ensemble`); conditions are ``[n_graphs, ...]``.
"""

from __future__ import annotations

import math

import torch
from ase.units import Bohr, Hartree
from torch import nn

Tensor = torch.Tensor

#: The Coulomb constant 1/(4 pi eps0) in eV Å / e^2: a polarizability in e Å^2/V times this is a volume in Å^3.
COULOMB = Hartree * Bohr


class ConditionEmbedding(nn.Module):
    """Rank-0 terms ``[..., n_atoms, C]`` and rank-1 terms ``[..., n_atoms, C, 3]`` from the conditions."""

    def __init__(self, channels: int, num_species: int, charge: bool, spin: bool, num_fidelities: int, field: bool) -> None:
        super().__init__()
        self.charge, self.spin, self.field = charge, spin, field
        scalars = int(charge) + int(spin)
        self.scalar_weights = nn.Parameter(torch.randn(scalars, channels)) if scalars else None
        self.fidelity_weights = nn.Parameter(torch.randn(num_fidelities, channels)) if num_fidelities > 1 else None
        self.field_weights = nn.Parameter(torch.randn(num_species, channels) / math.sqrt(3.0)) if field else None

    def invariant(self, total_charge: Tensor, spin_multiplicity: Tensor, fidelity: Tensor, graph_of_atom: Tensor) -> Tensor | None:
        """``[..., n_atoms, C]`` to add to the rank-0 channels, or None; inputs ``[n_graphs]``."""
        terms = []
        if self.scalar_weights is not None:
            columns = ([total_charge] if self.charge else []) + ([spin_multiplicity - 1.0] if self.spin else [])
            scalars = torch.stack(columns, dim=-1).index_select(0, graph_of_atom)
            terms.append(scalars.to(self.scalar_weights.dtype) @ self.scalar_weights)
        if self.fidelity_weights is not None:
            terms.append(self.fidelity_weights.index_select(-2, fidelity.index_select(0, graph_of_atom)))
        return sum(terms) if terms else None

    def vector(self, field: Tensor, species: Tensor, graph_of_atom: Tensor) -> Tensor:
        """``[..., n_atoms, C, 3]`` for the rank-1 channels from the field ``[..., n_graphs, 3]`` (V/Å)."""
        per_atom = field.index_select(-2, graph_of_atom).to(self.field_weights.dtype)
        return self.field_weights.index_select(-2, species)[..., None] * per_atom[..., None, :]


def ion_field_energy(total_charge: Tensor, field: Tensor, positions: Tensor, graph_of_atom: Tensor) -> Tensor:
    """``[..., n_atoms]`` eV: an equal share of ``-Q F·r_i`` per atom, summing to ``-Q F·c`` per structure (``c``
    the centroid): the energy of a structure of total charge ``Q`` (e) in the field ``F`` ``[..., n_graphs, 3]`` (V/Å)
    about the origin, which a translation by ``t`` changes by ``-Q F·t``; zero for neutral structures."""
    counts = torch.zeros_like(total_charge).index_add(0, graph_of_atom, torch.ones_like(graph_of_atom, dtype=total_charge.dtype))
    share = (total_charge / counts).index_select(0, graph_of_atom).to(positions.dtype)
    along = (field.index_select(-2, graph_of_atom).to(positions.dtype) * positions).sum(dim=-1)
    return -share * along


def field_response(dipole: Tensor, field: Tensor, positions: Tensor | None, keep_graph: bool) -> tuple[Tensor, Tensor | None]:
    """Second field derivatives from the dipole ``-dE/dF`` ``[..., n_graphs, 3]`` (e Å): the polarizability
    ``d mu_j / d F_k`` ``[..., n_graphs, 3, 3]`` as a volume (Å^3) and, when ``positions`` ``[..., n_atoms, 3]``
    is a leaf of the graph, the Born effective charges ``Z_A[j, k] = d mu_j / d R_Ak = d F_Ak / d E_j``
    ``[..., n_atoms, 3, 3]`` (e; row: field or dipole direction, column: displacement)."""
    wrt = [field] + ([positions] if positions is not None else [])
    rows = [torch.autograd.grad(dipole[..., j].sum(), wrt, create_graph=keep_graph, retain_graph=True) for j in range(3)]
    polarizability = torch.stack([row[0] for row in rows], dim=-2) * COULOMB
    born = torch.stack([row[1] for row in rows], dim=-2) if positions is not None else None
    return polarizability, born
