"""Tensorial outputs read from the equivariant node features: dipole (rank 1) and polarizability (rank 2).

* Dipole ``mu = sum_i (q_i (r_i - c) + p_i) + Q c`` (e Å) per structure: charges ``q_i`` (e) from the
  rank-0 channels, made neutral per structure, times the positions about the structure's centroid
  ``c``, plus atomic dipoles ``p_i`` from the rank-1 channels, plus the total charge ``Q`` at the
  centroid: an ion's dipole about the origin of the coordinates, as electronic-structure codes give
  it (it moves by ``Q t`` when the ion is translated by ``t``). Meant for molecules (a periodic
  cell's dipole needs the Berry phase, which this does not give).
* Polarizability ``alpha = sum_i (a_i I + A_i)`` (Å^3): an isotropic part ``a_i`` from the rank-0
  channels and a symmetric traceless part ``A_i`` from the rank-2 channels.

Every layer whose features reach the rank contributes through its own channel weights, as the
energy readouts do. Weights and features may carry leading member axes (:mod:`.ensemble`).
"""

from __future__ import annotations

import torch
from torch import nn

from .cartesian import packed_basis
from .constants import ConstantsModule

Tensor = torch.Tensor


def channel_readout(layer: nn.Linear, features: Tensor, rank: int) -> Tensor:
    """Mix the channels of the rank-``rank`` components of ``features`` ``[..., n, C, D]`` into one:
    ``[..., n, 2l+1]``."""
    components = features[..., rank * rank : (rank + 1) ** 2]
    return torch.einsum("...ncm,...c->...nm", components, layer.weight[..., 0, :])


def structure_sums(values: Tensor, graph_of_atom: Tensor, num_graphs: int, trailing: int) -> Tensor:
    """Per-structure sums of per-atom ``values`` ``[..., n_atoms, *t]`` with ``trailing`` = len(t) axes."""
    axis = -1 - trailing
    shape = list(values.shape)
    shape[axis] = num_graphs
    return values.new_zeros(shape).index_add(values.dim() + axis, graph_of_atom, values)


class TensorReadouts(ConstantsModule):
    """Dipoles ``[..., n_graphs, 3]`` (e Å) and/or polarizabilities ``[..., n_graphs, 3, 3]`` (Å^3).

    ``layer_ranks`` are the highest feature ranks of the layers, in order; a layer contributes to an
    output when its features reach that output's rank.
    """

    def __init__(self, channels: int, layer_ranks: list[int], dipole: bool, polarizability: bool) -> None:
        super().__init__()
        self.layer_ranks = layer_ranks
        self.dipole = dipole
        self.polarizability = polarizability

        def readouts(rank: int) -> nn.ModuleList:
            return nn.ModuleList(nn.Linear(channels, 1, bias=False) for layer_rank in layer_ranks if layer_rank >= rank)

        if dipole:
            self.charge_readouts, self.atomic_dipole_readouts = readouts(0), readouts(1)
            self.register_constant("vector_basis", packed_basis(1))
        if polarizability:
            self.trace_readouts, self.anisotropy_readouts = readouts(0), readouts(2)
            self.register_constant("matrix_basis", packed_basis(2))

    def _sum(self, readouts: nn.ModuleList, layer_features: list[Tensor], rank: int) -> Tensor:
        """Sum over the layers that reach ``rank`` of their channel readouts: ``[..., n, 2l+1]``."""
        reaching = [features for features, layer_rank in zip(layer_features, self.layer_ranks, strict=True)
                    if layer_rank >= rank]
        return sum(channel_readout(layer, features, rank) for layer, features in zip(readouts, reaching, strict=True))

    def forward(
        self, layer_features: list[Tensor], positions: Tensor, graph_of_atom: Tensor, num_graphs: int,
        total_charge: Tensor | None = None,
    ) -> tuple[Tensor | None, Tensor | None]:
        """``layer_features`` ``[..., n_atoms, C, D_layer]`` per layer, ``positions`` ``[..., n_atoms, 3]`` Å,
        ``total_charge`` ``[n_graphs]`` e (None: neutral)."""
        dipole = polarizability = None
        counts = structure_sums(torch.ones_like(positions[..., 0]), graph_of_atom, num_graphs, 0)
        if self.dipole:
            raw = self._sum(self.charge_readouts, layer_features, 0)[..., 0]
            charges = raw - (structure_sums(raw, graph_of_atom, num_graphs, 0) / counts).index_select(-1, graph_of_atom)
            centroids = structure_sums(positions, graph_of_atom, num_graphs, 1) / counts[..., None]
            relative = positions - centroids.index_select(-2, graph_of_atom)
            atomic = self._sum(self.atomic_dipole_readouts, layer_features, 1) @ self.vector_basis.T
            dipole = structure_sums(charges[..., None] * relative + atomic, graph_of_atom, num_graphs, 1)
            if total_charge is not None:
                dipole = dipole + total_charge.to(dipole.dtype)[:, None] * centroids
        if self.polarizability:
            isotropic = self._sum(self.trace_readouts, layer_features, 0)[..., 0]
            anisotropic = (self._sum(self.anisotropy_readouts, layer_features, 2) @ self.matrix_basis.T).unflatten(-1, (3, 3))
            per_atom = isotropic[..., None, None] * torch.eye(3, dtype=positions.dtype, device=positions.device) + anisotropic
            polarizability = structure_sums(per_atom, graph_of_atom, num_graphs, 2)
        return dipole, polarizability
