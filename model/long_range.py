"""Long-range electrostatics from latent charges (latent Ewald summation).

Every atom gets a latent charge ``q_i`` (units of e) from its invariant node features through a
small SiLU MLP; the charges of each structure are shifted to sum to its total charge (0 unless
``info["charge"]`` says otherwise). Charges are Gaussians of
width ``sigma`` (Å), so two atoms interact through ``k_e q_i q_j erf(r / (sqrt(2) sigma)) / r``
(``k_e`` = 14.3996 eV Å): bare Coulomb at long range, smooth and finite at short range.

- Molecules (a cell of zeros): the direct sum over all pairs.
- Periodic cells: the reciprocal-space Ewald sum
  ``E = (2 pi k_e / V) sum_{0 < |k| <= k_max} exp(-sigma^2 k^2 / 2) / k^2 |S(k)|^2 - k_e sum_i q_i^2 / (sqrt(2 pi) sigma)``
  with the structure factor ``S(k) = sum_i q_i exp(i k . r_i)`` and ``k_max = 2 pi / spacing``; the
  subtracted self energy makes it the same pair sum as for molecules, over all periodic images.

Both are returned as per-atom energies ``E_i = q_i phi_i / 2`` (``phi_i`` the potential at atom i),
which sum to the structure's energy and are differentiable with respect to positions and cell, so
forces and stress from autograd stay conservative. Weights and inputs may carry leading member
axes (:mod:`.ensemble`). Cells must be periodic in all three directions or in none.
"""

from __future__ import annotations

import math

import torch
from ase.units import Bohr, Hartree
from torch import nn

from .blocks import ScalarMLP

Tensor = torch.Tensor

#: e^2 / (4 pi epsilon_0) in eV Å.
COULOMB_CONSTANT = Hartree * Bohr


class LatentCharges(nn.Module):
    """Charges ``[..., n_atoms]`` (e) that sum to each structure's total charge ``[n_graphs]``, from
    invariant features ``[..., n_atoms, d]``.

    The weights start random: the energy is quadratic in the charges, so all-zero charges would be
    a stationary point that training never leaves.
    """

    def __init__(self, features: int, hidden: tuple[int, ...]) -> None:
        super().__init__()
        self.mlp = ScalarMLP(features, hidden, output_bias=False)

    def forward(self, invariants: Tensor, graph_of_atom: Tensor, total_charge: Tensor) -> Tensor:
        raw = self.mlp(invariants)
        num_graphs = total_charge.shape[0]
        ones = torch.ones_like(raw[..., :1]).expand_as(raw)
        counts = raw.new_zeros((*raw.shape[:-1], num_graphs)).index_add(-1, graph_of_atom, ones)
        excess = raw.new_zeros((*raw.shape[:-1], num_graphs)).index_add(-1, graph_of_atom, raw) - total_charge
        return raw - (excess / counts).index_select(-1, graph_of_atom)


def direct_potential(positions: Tensor, charges: Tensor, sigma: float, coulomb: float = COULOMB_CONSTANT) -> Tensor:
    """Potential ``[..., n]`` (V = eV/e) at each of ``n`` atoms of one molecule from all the others'
    Gaussian charges; ``positions`` ``[..., n, 3]`` Å, ``charges`` ``[..., n]`` e."""
    n = positions.shape[-2]
    return pair_potential(positions, charges, torch.triu_indices(n, n, offset=1, device=positions.device), sigma, coulomb)


def pair_potential(positions: Tensor, charges: Tensor, pairs: Tensor, sigma: float,
                   coulomb: float = COULOMB_CONSTANT) -> Tensor:
    """Potential ``[..., n]`` (V = eV/e) at each atom from the Gaussian charges it is paired with, each pair of
    ``pairs`` ``[2, n_pairs]`` (atom indices, i < j) counted once; ``positions`` ``[..., n, 3]`` Å, ``charges``
    ``[..., n]`` e."""
    first, second = pairs[0], pairs[1]
    distances = torch.linalg.vector_norm(positions.index_select(-2, first) - positions.index_select(-2, second), dim=-1)
    coupling = coulomb * torch.erf(distances / (math.sqrt(2.0) * sigma)) / distances
    potential = torch.zeros_like(charges)
    potential = potential.index_add(-1, first, coupling * charges.index_select(-1, second))
    return potential.index_add(-1, second, coupling * charges.index_select(-1, first))


def wave_vectors(cell: Tensor, k_max: float) -> Tensor:
    """Integer triples ``[n_k, 3]`` of half of the reciprocal lattice vectors with ``0 < |k| <= k_max``
    (1/Å) of ``cell`` ``[3, 3]`` (rows are lattice vectors, Å); ``-k`` of each is left out."""
    cell = cell.detach().to(torch.float64)
    lengths: list[float] = torch.linalg.vector_norm(cell, dim=-1).tolist()
    bounds = [int(math.floor(k_max * length / (2 * math.pi))) for length in lengths]
    ranges = [torch.arange(-bound, bound + 1, dtype=torch.float64, device=cell.device) for bound in bounds]
    triples = torch.cartesian_prod(ranges[0], ranges[1], ranges[2]).reshape(-1, 3)
    first_nonzero = torch.where(triples[:, 0] != 0, triples[:, 0], torch.where(triples[:, 1] != 0, triples[:, 1], triples[:, 2]))
    half = triples[first_nonzero > 0]
    k_lengths = torch.linalg.vector_norm(half @ (2 * math.pi * torch.linalg.inv(cell).mT), dim=-1)
    return half[k_lengths <= k_max]


def reciprocal_potential(positions: Tensor, charges: Tensor, cell: Tensor, sigma: float, k_max: float,
                         coulomb: float = COULOMB_CONSTANT) -> Tensor:
    """Ewald potential ``[..., n]`` (V = eV/e) at each atom of one periodic cell ``[..., 3, 3]`` (Å),
    self-interaction removed; ``positions`` ``[..., n, 3]`` Å, ``charges`` ``[..., n]`` e."""
    triples = wave_vectors(cell.reshape(-1, 3, 3)[0], k_max).to(positions.dtype)
    return wave_potential(positions, charges, cell, triples, sigma, coulomb) - self_potential(charges, sigma, coulomb)


def wave_potential(positions: Tensor, charges: Tensor, cell: Tensor, triples: Tensor, sigma: float,
                   coulomb: float = COULOMB_CONSTANT) -> Tensor:
    """The reciprocal-space sum of the Ewald potential ``[..., n]`` (V = eV/e) over the wave vectors whose integer
    ``triples`` ``[n_k, 3]`` (half of them, as :func:`wave_vectors` gives) are given, in a periodic ``cell``
    ``[..., 3, 3]`` (Å); ``positions`` ``[..., n, 3]`` Å, ``charges`` ``[..., n]`` e."""
    reciprocal = 2 * math.pi * torch.linalg.inv(cell).mT
    k = triples @ reciprocal
    k_squared = (k * k).sum(-1)
    volume = torch.linalg.det(cell).abs()
    weight = 2 * (4 * math.pi * coulomb) * torch.exp(-0.5 * sigma**2 * k_squared) / k_squared / volume[..., None]
    phase = positions @ k.mT
    cosine, sine = torch.cos(phase), torch.sin(phase)
    structure_cos = (charges[..., :, None] * cosine).sum(-2)
    structure_sin = (charges[..., :, None] * sine).sum(-2)
    return (cosine * (weight * structure_cos)[..., None, :] + sine * (weight * structure_sin)[..., None, :]).sum(-1)


def self_potential(charges: Tensor, sigma: float, coulomb: float = COULOMB_CONSTANT) -> Tensor:
    """The potential ``[..., n]`` (V = eV/e) of each Gaussian charge ``[..., n]`` (e) on itself, which the
    reciprocal sum includes and the pair sum does not."""
    return 2 * coulomb * charges / (math.sqrt(2 * math.pi) * sigma)


class LatentEwald(nn.Module):
    """Per-atom long-range energies ``[..., n_atoms]`` (eV) of latent Gaussian charges.

    ``sigma`` is the charge width (Å), ``spacing`` the real-space resolution of the reciprocal sum
    (Å): wave vectors up to ``2 pi / spacing`` are kept.
    """

    def __init__(self, features: int, hidden: tuple[int, ...], sigma: float, spacing: float) -> None:
        super().__init__()
        self.charges = LatentCharges(features, hidden)
        self.sigma = sigma
        self.k_max = 2 * math.pi / spacing

    def forward(
        self, invariants: Tensor, positions: Tensor, cell: Tensor, graph_of_atom: Tensor, total_charge: Tensor
    ) -> Tensor:
        """``invariants`` ``[..., n_atoms, d]``, ``positions`` ``[..., n_atoms, 3]`` Å, ``cell``
        ``[..., n_graphs, 3, 3]`` Å, ``graph_of_atom`` ``[n_atoms]`` (sorted), ``total_charge`` ``[n_graphs]``
        (e; a charged cell gets a neutralising background) -> ``[..., n_atoms]`` eV."""
        charges = self.charges(invariants, graph_of_atom, total_charge)
        return electrostatic_energies(positions, charges, cell, graph_of_atom, self.sigma, self.k_max)


def partly_periodic_message(subject: str, periodic_directions: int) -> str:
    """Why the long-range term refuses ``subject``, periodic along ``periodic_directions`` (1 or 2) cell vectors."""
    return (subject + " is periodic along " + str(periodic_directions) + " of 3 cell vectors; the long-range term needs "
            "a cell periodic in all three directions (Ewald sum) or in none (molecule)")


def electrostatic_energies(positions: Tensor, charges: Tensor, cell: Tensor, graph_of_atom: Tensor, sigma: float,
                           k_max: float) -> Tensor:
    """Per-atom energies ``[..., n_atoms]`` (eV) of Gaussian ``charges`` ``[..., n_atoms]`` (e) of width ``sigma``
    (Å): a direct sum in molecules, an Ewald sum with wave vectors up to ``k_max`` (1/Å) in periodic cells
    ``[..., n_graphs, 3, 3]``. Written for TorchScript too (exported models script it)."""
    num_graphs = cell.shape[-3]
    counts: list[int] = torch.bincount(graph_of_atom, minlength=num_graphs).tolist()
    periodic_rows: list[int] = (cell.detach().reshape(-1, num_graphs, 3, 3)[0].abs().sum(-1) > 0).sum(-1).tolist()
    potentials: list[Tensor] = []
    start = 0
    for graph in range(num_graphs):
        end = start + counts[graph]
        if periodic_rows[graph] == 0:
            potentials.append(direct_potential(positions[..., start:end, :], charges[..., start:end], sigma))
        elif periodic_rows[graph] == 3:
            potentials.append(reciprocal_potential(positions[..., start:end, :], charges[..., start:end],
                                                   cell[..., graph, :, :], sigma, k_max))
        else:
            raise ValueError(partly_periodic_message("structure " + str(graph) + " of the batch", periodic_rows[graph]))
        start = end
    return 0.5 * charges * torch.cat(potentials, dim=-1)
