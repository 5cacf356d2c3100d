"""Building blocks of the Cartesian-tensor potential.

Feature layout: node and edge features are stacks of packed ICTs of ranks 0..L, so a feature
array is ``[n, channels, (L+1)**2]`` with rank l in components ``l*l .. (l+1)**2 - 1``
(see :mod:`tace_aiida.model.cartesian`).

Member axes: every block also accepts weights and inputs with leading axes ``[..., n, ...]``
and broadcasts over them, so the weights of an ensemble stacked as ``[members, ...]`` evaluate
all members in one pass (see :mod:`tace_aiida.model.ensemble`).
"""

from __future__ import annotations

import math
from itertools import pairwise

import torch
from torch import nn

from .cartesian import is_allowed_path, packed_coupling, rank_of_component, rank_slices
from .constants import ConstantsModule
from .radial import RadialMLP

Tensor = torch.Tensor


class EdgeHarmonics(ConstantsModule):
    """Packed Cartesian harmonics ``T^l(r)`` of unit edge vectors, ranks 0..max_rank.

    Uses ``T^(l+1)(r) = (T^l(r) x T^1(r)) -> l+1``, exact for the normalised product.
    """

    def __init__(self, max_rank: int) -> None:
        super().__init__()
        self.max_rank = max_rank
        for l in range(1, max_rank):
            self.register_constant(f"raise_{l}", packed_coupling(l, 1, l + 1))

    def forward(self, unit_vectors: Tensor) -> Tensor:
        """``unit_vectors`` [..., n_edges, 3] -> ``[..., n_edges, (max_rank+1)**2]``."""
        ranks = [torch.ones_like(unit_vectors[..., :1])]
        if self.max_rank >= 1:
            ranks.append(unit_vectors)
        for l in range(1, self.max_rank):
            coupling = getattr(self, f"raise_{l}")
            ranks.append(torch.einsum("...a,...b,abm->...m", ranks[-1], unit_vectors, coupling))
        return torch.cat(ranks, dim=-1)


class RankwiseLinear(ConstantsModule):
    """Channel mixing with one weight matrix per rank: ``[n, c_in, D] -> [n, c_out, D]``.

    Mixing channels of the same rank commutes with rotations, so equivariance is kept.
    """

    def __init__(self, max_rank: int, channels_in: int, channels_out: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(max_rank + 1, channels_in, channels_out))
        self.register_constant("component_rank", rank_of_component(max_rank))
        self.norm = 1.0 / math.sqrt(channels_in)

    def forward(self, features: Tensor) -> Tensor:
        weight = self.weight[..., self.component_rank, :, :] * self.norm
        return torch.einsum("...ncm,...mcd->...ndm", features, weight)


class SpeciesLinear(nn.Module):
    """Rank-wise channel mixing whose weights depend on the atom's species (self-interaction)."""

    def __init__(self, max_rank: int, channels_in: int, channels_out: int, num_species: int) -> None:
        super().__init__()
        self.num_species = num_species
        self.linear = RankwiseLinear(max_rank, channels_in * num_species, channels_out)
        self.linear.norm = 1.0 / math.sqrt(channels_in)

    def forward(self, features: Tensor, species_one_hot: Tensor) -> Tensor:
        """``features`` [..., n, c, D], ``species_one_hot`` [n, n_species] -> [..., n, c_out, D]."""
        expanded = species_one_hot[:, :, None, None] * features[..., :, None, :, :]
        return self.linear(expanded.flatten(-3, -2))


class InteractionBlock(ConstantsModule):
    """Equivariant message passing: ``A_i = sum_j sum_paths w_p(r_ij) (h_j (x) T(r_ij)) -> l3 / d``.

    ``d`` is ``message_divisor``: the mean number of neighbours, or its square root (``ModelConfig.message_normalization``).

    Paths: node rank l1 <= ``max_node_rank``, edge rank l2 <= ``max_edge_rank``, output rank
    l3 <= ``max_edge_rank``, parity-even; they are numbered l1-major, so the paths of one l1 are contiguous.
    A message is linear in the products ``h_jci w_cp`` of a node component i and the weight of a path p of the
    same l1, K = sum over paths of 2*l1+1 of them per channel: ``message_ecm = sum_k (h w)_eck G_ekm``, where
    ``G = T(r_ij) @ fused`` ``[n_edges, K, D_edge]`` holds every path's coupling with the edge harmonics
    contracted (channel-independent). One batched matmul per edge then handles every channel and path, with
    K inputs per output component rather than one column per output component of every path (22 against 40
    with vector node features and edge rank 3).
    """

    def __init__(
        self,
        max_node_rank: int,
        max_edge_rank: int,
        channels: int,
        num_radial: int,
        radial_mlp: tuple[int, ...],
        message_divisor: float,
    ) -> None:
        super().__init__()
        self.linear_up = RankwiseLinear(max_node_rank, channels, channels)
        node_slices, edge_slices = rank_slices(max_node_rank), rank_slices(max_edge_rank)
        paths = [
            (l1, l2, l3)
            for l1 in range(max_node_rank + 1)
            for l2 in range(max_edge_rank + 1)
            for l3 in range(max_edge_rank + 1)
            if is_allowed_path(l1, l2, l3)
        ]
        self.path_groups: list[tuple[slice, slice]] = []  # (node components of rank l1, its paths) for each l1
        for l1 in range(max_node_rank + 1):
            indices = [index for index, path in enumerate(paths) if path[0] == l1]
            if indices:
                self.path_groups.append((node_slices[l1], slice(indices[0], indices[-1] + 1)))
        pairs = [  # (component within its rank, path), in the order forward() forms the products
            (i, paths[index])
            for components, group in self.path_groups
            for i in range(components.stop - components.start)
            for index in range(group.start, group.stop)
        ]
        fused = torch.zeros((max_edge_rank + 1) ** 2, len(pairs), (max_edge_rank + 1) ** 2, dtype=torch.float64)
        for k, (i, (l1, l2, l3)) in enumerate(pairs):
            fused[edge_slices[l2], k, edge_slices[l3]] = packed_coupling(l1, l2, l3)[i]
        self.register_constant("fused", fused.flatten(1))
        self.num_pairs = len(pairs)
        self.radial = RadialMLP(num_radial, radial_mlp, len(paths), channels)
        self.linear = RankwiseLinear(max_edge_rank, channels, channels)
        # [1, 1, 1] (members: [M, 1, 1, 1]) broadcasts over [..., n, C, D]; AOTInductor cannot unsqueeze a 0-d constant
        self.register_constant("message_divisor", torch.full((1, 1, 1), float(message_divisor), dtype=torch.float64))

    def forward(self, node_features: Tensor, harmonics: Tensor, radial: Tensor, edge_index: Tensor) -> Tensor:
        """``node_features`` [..., n_nodes, C, D_node], ``harmonics`` [..., n_edges, D_edge],
        ``radial`` [..., n_edges, n_radial], ``edge_index`` [2, n_edges] (sender, receiver)
        -> ``[..., n_nodes, C, D_edge]``."""
        sender, receiver = edge_index[0], edge_index[1]
        up = self.linear_up(node_features)[..., sender, :, :]
        weights = self.radial(radial)
        products = torch.cat(
            [(up[..., components, None] * weights[..., None, paths]).flatten(-2) for components, paths in self.path_groups],
            dim=-1,
        )
        edge_coupling = (harmonics @ self.fused).unflatten(-1, (self.num_pairs, -1))
        messages = products @ edge_coupling
        shape = (*messages.shape[:-3], node_features.shape[-3], *messages.shape[-2:])
        summed = messages.new_zeros(shape).index_add(-3, receiver, messages)
        return self.linear(summed / self.message_divisor)


class ProductBasisBlock(ConstantsModule):
    """ACE-style many-body features from ``A``: ``B^(1) = A``, ``B^(nu+1) = B^(nu) (x) A``.

    Every parity-even path is kept (intermediate ranks up to ``max_in_rank``; at nu = 2 only
    l1 <= l2, the other order is the same product). The output of rank L is a sum over nu and
    paths with species- and channel-dependent weights, ``[n, C, (max_out_rank+1)**2]``.

    Layout: the paths of one correlation order are kept in one array ``[n, C, columns]`` ordered by
    rank, path-major, so rank l is a contiguous block viewable as ``[n, C, paths_l, 2l+1]``. A step
    ``nu -> nu+1`` contracts, per input rank l, ``A`` with the couplings of every kind of path
    ``(l, l_new) -> l_out`` leaving it (one matrix ``[(L+1)**2, (2l+1) K_l]``, K_l the summed widths
    ``2 l_out + 1``), then multiplies the result by the ``[paths_l, 2l+1]`` block; one column gather
    sorts the new paths by rank. The couplings do not depend on the path, so this costs
    ``paths_l (2l+1) K_l`` per channel instead of the ``paths_l (2l+1) (L+1)**2`` of an outer product:
    4-16 times less at the last order of invariant or vector outputs.
    """

    def __init__(self, max_in_rank: int, max_out_rank: int, correlation: int, channels: int, num_species: int) -> None:
        super().__init__()
        self.max_in_rank = max_in_rank
        self.max_out_rank = max_out_rank
        in_dim = (max_in_rank + 1) ** 2
        in_slices = rank_slices(max_in_rank)
        paths_per_rank = {l: 1 for l in range(max_in_rank + 1)}
        self.layouts: list[dict[int, int]] = [dict(paths_per_rank)]
        self.group_ranks: list[list[int]] = []
        for nu in range(2, correlation + 1):
            limit = max_out_rank if nu == correlation else max_in_rank
            groups: list[tuple[int, list[tuple[int, int]]]] = []  # (l_prev, its kinds of path (l_new, l_out))
            for l_prev in sorted(paths_per_rank):
                kinds = [
                    (l_new, l_out)
                    for l_new in range(l_prev if nu == 2 else 0, max_in_rank + 1)
                    for l_out in range(limit + 1)
                    if is_allowed_path(l_prev, l_new, l_out)
                ]
                if kinds:
                    groups.append((l_prev, kinds))
            next_counts: dict[int, int] = {}
            sort_keys = []
            for l_prev, kinds in groups:
                contraction = torch.zeros(in_dim, 2 * l_prev + 1, sum(2 * lo + 1 for _, lo in kinds), dtype=torch.float64)
                column = 0
                for l_new, l_out in kinds:
                    coupling = packed_coupling(l_prev, l_new, l_out).permute(1, 0, 2)
                    contraction[in_slices[l_new], :, column : column + 2 * l_out + 1] = coupling
                    column += 2 * l_out + 1
                self.register_constant(f"contraction_{nu}_{l_prev}", contraction.reshape(in_dim, -1))
                for _path in range(paths_per_rank[l_prev]):  # new paths, path-major as the contraction's output
                    for _, l_out in kinds:
                        sort_keys += [(l_out, next_counts.get(l_out, 0), m) for m in range(2 * l_out + 1)]
                        next_counts[l_out] = next_counts.get(l_out, 0) + 1
            order = sorted(range(len(sort_keys)), key=sort_keys.__getitem__)
            self.register_constant(f"sort_{nu}", torch.tensor(order, dtype=torch.long))
            self.group_ranks.append([l_prev for l_prev, _ in groups])
            paths_per_rank = dict(sorted(next_counts.items()))
            self.layouts.append(paths_per_rank)
        outputs_per_rank = [sum(layout.get(l, 0) for layout in self.layouts) for l in range(max_out_rank + 1)]
        self.weights = nn.ParameterList(
            [nn.Parameter(torch.randn(num_species, count, channels) / math.sqrt(count)) for count in outputs_per_rank]
        )

    @staticmethod
    def _blocks(values: Tensor, layout: dict[int, int]) -> dict[int, Tensor]:
        """Split ``[n, C, columns]`` into ``{rank: [n, C, paths, 2l+1]}`` following ``layout``."""
        blocks, start = {}, 0
        for l, count in layout.items():
            width = count * (2 * l + 1)
            blocks[l] = values[..., start : start + width].unflatten(-1, (count, 2 * l + 1))
            start += width
        return blocks

    def forward(self, features: Tensor, species: Tensor) -> Tensor:
        """``features`` [..., n, C, (max_in_rank+1)**2], ``species`` [n] (indices) -> [..., n, C, (max_out_rank+1)**2]."""
        current = features
        per_order = [self._blocks(features, self.layouts[0])]
        for nu, ranks in enumerate(self.group_ranks, start=2):
            blocks = self._blocks(current, self.layouts[nu - 2])
            parts = []
            for l_prev in ranks:
                width_prev = 2 * l_prev + 1
                contracted = (features @ getattr(self, f"contraction_{nu}_{l_prev}")).unflatten(-1, (width_prev, -1))
                parts.append((blocks[l_prev] @ contracted).flatten(-2))
            current = torch.cat(parts, dim=-1).index_select(-1, getattr(self, f"sort_{nu}"))
            per_order.append(self._blocks(current, self.layouts[nu - 1]))
        result = []
        for l, weights in enumerate(self.weights):
            basis = torch.cat([blocks[l] for blocks in per_order if l in blocks], dim=-2)
            result.append(torch.einsum("...ncpm,...npc->...ncm", basis, weights[..., species, :, :]))
        return torch.cat(result, dim=-1)


def linear(layer: nn.Linear, x: Tensor) -> Tensor:
    """``layer(x)`` that also broadcasts over leading member axes of the layer's weights."""
    y = x @ layer.weight.mT
    return y if layer.bias is None else y + layer.bias.unsqueeze(-2)


class LinearReadout(nn.Module):
    """Per-atom energy from the rank-0 channels: ``[..., n, C, D] -> [..., n]``."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.linear = nn.Linear(channels, 1, bias=False)

    def forward(self, features: Tensor) -> Tensor:
        return linear(self.linear, features[..., 0]).squeeze(-1)


class ScalarMLP(nn.Module):
    """SiLU MLP to one number per row, ``[..., n, d] -> [..., n]``, broadcasting over member axes."""

    def __init__(self, features: int, hidden: tuple[int, ...], output_bias: bool = True) -> None:
        super().__init__()
        sizes = (features, *hidden)
        layers: list[nn.Module] = []
        for size_in, size_out in pairwise(sizes):
            layers += [nn.Linear(size_in, size_out), nn.SiLU()]
        layers.append(nn.Linear(sizes[-1], 1, bias=output_bias))
        self.net = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        for layer in self.net:
            x = linear(layer, x) if isinstance(layer, nn.Linear) else layer(x)
        return x.squeeze(-1)


class MLPReadout(ScalarMLP):
    """Per-atom energy from the rank-0 channels through a SiLU MLP: ``[..., n, C, D] -> [..., n]``."""

    def __init__(self, channels: int, hidden: tuple[int, ...]) -> None:
        super().__init__(channels, hidden)

    def forward(self, features: Tensor) -> Tensor:
        return super().forward(features[..., 0])
