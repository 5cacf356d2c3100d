"""The interaction and product-basis blocks of the TDN fast path (:mod:`.decomposition`).

Drop-in replacements of :class:`.blocks.InteractionBlock` and :class:`.blocks.ProductBasisBlock`
(same inputs, outputs and feature layout) in which every multi-path product is one CP-decomposed
bilinear map with one weight per channel for all paths (path-weight sharing).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from .blocks import RankwiseLinear
from .cartesian import rank_slices
from .constants import ConstantsModule
from .decomposition import CPProduct
from .radial import RadialMLP

Tensor = torch.Tensor


class DecomposedInteractionBlock(ConstantsModule):
    """``A_i = C @ sum_j w(r_ij) * (A.T h_j) * (B.T T(r_ij)) / d``, ``d`` as in :class:`.blocks.InteractionBlock`.

    The node factor ``A`` is applied per node before the gather and the output factor ``C`` per
    node after the sum over neighbours, so an edge costs ``O(channels * R)``: one radial weight per
    channel, an elementwise product and the scatter.
    """

    def __init__(
        self,
        max_node_rank: int,
        max_edge_rank: int,
        channels: int,
        num_radial: int,
        radial_mlp: tuple[int, ...],
        message_divisor: float,
        cp_rank: int,
        trainable: bool,
    ) -> None:
        super().__init__()
        self.linear_up = RankwiseLinear(max_node_rank, channels, channels)
        self.product = CPProduct(max_node_rank, max_edge_rank, max_edge_rank, cp_rank, trainable)
        self.radial = RadialMLP(num_radial, radial_mlp, 1, channels)
        self.linear = RankwiseLinear(max_edge_rank, channels, channels)
        # [1, 1, 1] (members: [M, 1, 1, 1]) broadcasts over [..., n, C, D]; AOTInductor cannot unsqueeze a 0-d constant
        self.register_constant("message_divisor", torch.full((1, 1, 1), float(message_divisor), dtype=torch.float64))

    def forward(self, node_features: Tensor, harmonics: Tensor, radial: Tensor, edge_index: Tensor) -> Tensor:
        """As :meth:`.blocks.InteractionBlock.forward`: ``[..., n_nodes, C, D_node] -> [..., n_nodes, C, D_edge]``."""
        sender, receiver = edge_index[0], edge_index[1]
        left = self.product.left(self.linear_up(node_features))
        edge_weights = self.product.right(harmonics)[..., None, :] * self.radial(radial)
        messages = left[..., sender, :, :] * edge_weights
        shape = (*messages.shape[:-3], node_features.shape[-3], *messages.shape[-2:])
        summed = messages.new_zeros(shape).index_add(-3, receiver, messages)
        aggregated = self.product.out(summed) / self.message_divisor
        return self.linear(aggregated)


class DecomposedProductBasisBlock(nn.Module):
    """``B^(1) = A``, ``B^(nu+1) = CP(B^(nu), A)``; the output of rank l is
    ``sum_nu w[species, nu, c] B^(nu)_l``, ``[..., n, C, (max_out_rank+1)**2]``.

    Each correlation order has its own CP product (intermediate orders keep ranks up to
    ``max_in_rank``, the last keeps ``max_out_rank``).
    """

    def __init__(
        self, max_in_rank: int, max_out_rank: int, correlation: int, channels: int, num_species: int, cp_rank: int,
        trainable: bool,
    ) -> None:
        super().__init__()
        self.max_out_rank = max_out_rank
        self.order_ranks = [max_in_rank] * correlation
        if correlation > 1:
            self.order_ranks[-1] = max_out_rank
        self.products = nn.ModuleList(
            CPProduct(max_in_rank, max_in_rank, rank_out, cp_rank, trainable) for rank_out in self.order_ranks[1:]
        )
        self.weights = nn.ParameterList()
        for l in range(max_out_rank + 1):
            count = sum(rank >= l for rank in self.order_ranks)
            self.weights.append(nn.Parameter(torch.randn(num_species, count, channels) / math.sqrt(count)))

    def forward(self, features: Tensor, species: Tensor) -> Tensor:
        """``features`` [..., n, C, (max_in_rank+1)**2], ``species`` [n] -> ``[..., n, C, (max_out_rank+1)**2]``."""
        orders = [features]
        for product in self.products:
            orders.append(product(orders[-1], features))
        result = []
        for l, (where, weights) in enumerate(zip(rank_slices(self.max_out_rank), self.weights, strict=True)):
            basis = torch.stack([order[..., where] for order, rank in zip(orders, self.order_ranks, strict=True) if rank >= l], dim=-2)
            result.append(torch.einsum("...ncpm,...npc->...ncm", basis, weights[..., species, :, :]))
        return torch.cat(result, dim=-1)
