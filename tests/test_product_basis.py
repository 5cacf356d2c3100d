"""The product basis against a path-by-path reference: each path's coupling applied on its own, in float64."""

from __future__ import annotations

import pytest
import torch
from tace_aiida.model.blocks import ProductBasisBlock
from tace_aiida.model.cartesian import is_allowed_path, packed_coupling, rank_slices


def reference_product_basis(block: ProductBasisBlock, features: torch.Tensor, species: torch.Tensor,
                            correlation: int) -> torch.Tensor:
    """``B^(nu+1)_path = C_(l_prev, l_new, l_out)(B^(nu)_p, A_l_new)`` one path at a time, paths of a rank in the
    order they are made (previous rank, previous path, then l_new and l_out), then the weighted sum per rank."""
    slices = rank_slices(block.max_in_rank)
    order_one = {l: [features[..., slices[l]]] for l in range(block.max_in_rank + 1)}
    orders = [order_one]
    for nu in range(2, correlation + 1):
        limit = block.max_out_rank if nu == correlation else block.max_in_rank
        new: dict[int, list[torch.Tensor]] = {}
        for l_prev, previous_paths in sorted(orders[-1].items()):
            for previous in previous_paths:
                for l_new in range(l_prev if nu == 2 else 0, block.max_in_rank + 1):
                    for l_out in range(limit + 1):
                        if is_allowed_path(l_prev, l_new, l_out):
                            coupled = torch.einsum("ncab,abm->ncm", previous[..., :, None] * features[..., None, slices[l_new]],
                                                   packed_coupling(l_prev, l_new, l_out))
                            new.setdefault(l_out, []).append(coupled)
        orders.append(new)
    outputs = []
    for l, weights in enumerate(block.weights):
        paths = [path for order in orders for path in order.get(l, [])]
        basis = torch.stack(paths, dim=-2)  # [n, C, paths, 2l+1]
        outputs.append(torch.einsum("ncpm,npc->ncm", basis, weights[species]))
    return torch.cat(outputs, dim=-1)


@pytest.mark.parametrize(("max_in_rank", "max_out_rank", "correlation"),
                         [(1, 1, 3), (2, 0, 3), (2, 1, 2), (3, 1, 3), (3, 0, 3), (2, 2, 3), (3, 1, 1)])
def test_product_basis_equals_the_path_by_path_reference(max_in_rank, max_out_rank, correlation):
    torch.manual_seed(0)
    block = ProductBasisBlock(max_in_rank, max_out_rank, correlation, channels=3, num_species=2).double()
    features = torch.randn(5, 3, (max_in_rank + 1) ** 2, dtype=torch.float64)
    species = torch.tensor([0, 1, 1, 0, 1])

    expected = reference_product_basis(block, features, species, correlation)
    assert expected.shape == (5, 3, (max_out_rank + 1) ** 2)
    assert torch.allclose(block(features, species), expected, rtol=0, atol=1e-12)
