"""Irreducible Cartesian tensors: harmonics, products, packed storage (float64, errors < 1e-10)."""

from __future__ import annotations

import itertools

import pytest
import torch
from tace_aiida.model.blocks import EdgeHarmonics
from tace_aiida.model.cartesian import (
    cartesian_harmonic,
    irreducible_product,
    is_allowed_path,
    pack,
    packed_basis,
    packed_coupling,
    path_normalisation,
    unpack,
)

from .conftest import random_orthogonal

MAX_RANK = 4
PATHS = [p for p in itertools.product(range(MAX_RANK + 1), repeat=3) if is_allowed_path(*p)]
TOLERANCE = 1e-10


def rotate(tensor: torch.Tensor, rank: int, matrix: torch.Tensor) -> torch.Tensor:
    """Apply ``matrix`` to every one of the last ``rank`` axes."""
    for axis in range(rank):
        tensor = torch.movedim(torch.tensordot(tensor, matrix, dims=([tensor.dim() - rank + axis], [1])), -1, tensor.dim() - rank + axis)
    return tensor


def assert_symmetric_traceless(tensor: torch.Tensor, rank: int) -> None:
    lead = tensor.dim() - rank
    for i, j in itertools.combinations(range(lead, lead + rank), 2):
        assert (tensor - tensor.transpose(i, j)).abs().max() < TOLERANCE
        assert tensor.diagonal(dim1=i, dim2=j).sum(-1).abs().max() < TOLERANCE


def random_units(n: int, seed: int) -> torch.Tensor:
    vectors = torch.randn(n, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))
    return vectors / vectors.norm(dim=-1, keepdim=True)


def random_ict(rank: int, n: int, seed: int) -> torch.Tensor:
    """Random full ICTs ``[n, 3, ..., 3]`` (random packed coordinates, unpacked)."""
    coordinates = torch.randn(n, 2 * rank + 1, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))
    return unpack(coordinates, rank)


def test_harmonics_match_closed_forms():
    r = random_units(5, 0)
    eye = torch.eye(3, dtype=torch.float64)
    t2 = 1.5 * (torch.einsum("ni,nj->nij", r, r) - eye / 3)
    traces = (
        torch.einsum("ni,jk->nijk", r, eye) + torch.einsum("nj,ik->nijk", r, eye) + torch.einsum("nk,ij->nijk", r, eye)
    )
    t3 = 2.5 * (torch.einsum("ni,nj,nk->nijk", r, r, r) - traces / 5)
    assert (cartesian_harmonic(r, 2) - t2).abs().max() < TOLERANCE
    assert (cartesian_harmonic(r, 3) - t3).abs().max() < TOLERANCE


@pytest.mark.parametrize("rank", range(MAX_RANK + 1))
def test_harmonic_is_symmetric_traceless_and_contracts_to_lower_rank(rank):
    r = random_units(7, rank)
    harmonic = cartesian_harmonic(r, rank)
    assert_symmetric_traceless(harmonic, rank)
    if rank > 0:
        contracted = torch.einsum("n...i,ni->n...", harmonic, r)
        assert (contracted - cartesian_harmonic(r, rank - 1)).abs().max() < TOLERANCE


@pytest.mark.parametrize("reflect", [False, True])
@pytest.mark.parametrize("rank", range(MAX_RANK + 1))
def test_harmonic_rotates_as_rank_l_tensor(rank, reflect):
    q = torch.tensor(random_orthogonal(rank, reflect))
    r = random_units(6, 10 + rank)
    expected = rotate(cartesian_harmonic(r, rank), rank, q)
    assert (cartesian_harmonic(r @ q.T, rank) - expected).abs().max() < TOLERANCE


def test_there_are_23_parity_even_paths_up_to_rank_3():
    assert len([p for p in itertools.product(range(4), repeat=3) if is_allowed_path(*p)]) == 23


@pytest.mark.parametrize("reflect", [False, True])
@pytest.mark.parametrize("path", PATHS, ids=lambda p: f"{p[0]}x{p[1]}->{p[2]}")
def test_product_is_irreducible_and_equivariant(path, reflect):
    l1, l2, l3 = path
    first, second = random_ict(l1, 4, 1), random_ict(l2, 4, 2)
    product = irreducible_product(first, l1, second, l2, l3)
    assert_symmetric_traceless(product, l3)
    q = torch.tensor(random_orthogonal(sum(path), reflect))
    rotated_inputs = irreducible_product(rotate(first, l1, q), l1, rotate(second, l2, q), l2, l3)
    assert (rotated_inputs - rotate(product, l3, q)).abs().max() < TOLERANCE * max(1.0, product.abs().max())


@pytest.mark.parametrize("path", PATHS, ids=lambda p: f"{p[0]}x{p[1]}->{p[2]}")
def test_normalised_product_of_harmonics_is_harmonic(path):
    l1, l2, l3 = path
    r = random_units(5, 3)
    raw = irreducible_product(cartesian_harmonic(r, l1), l1, cartesian_harmonic(r, l2), l2, l3)
    assert (path_normalisation(*path) * raw - cartesian_harmonic(r, l3)).abs().max() < TOLERANCE


def test_normalisation_of_vector_product_with_averaging_convention():
    assert path_normalisation(1, 1, 2) == pytest.approx(1.5, abs=1e-12)


@pytest.mark.parametrize("rank", range(MAX_RANK + 1))
def test_packed_basis_is_orthonormal_and_exact(rank):
    basis = packed_basis(rank)
    assert basis.shape == (3**rank, 2 * rank + 1)
    assert (basis.T @ basis - torch.eye(2 * rank + 1, dtype=torch.float64)).abs().max() < TOLERANCE
    tensors = cartesian_harmonic(random_units(9, 4), rank)
    assert (unpack(pack(tensors, rank), rank) - tensors).abs().max() < TOLERANCE
    assert_symmetric_traceless(unpack(torch.eye(2 * rank + 1, dtype=torch.float64), rank), rank)


@pytest.mark.parametrize("path", PATHS, ids=lambda p: f"{p[0]}x{p[1]}->{p[2]}")
def test_packed_coupling_reproduces_full_product(path):
    l1, l2, l3 = path
    x = torch.randn(3, 2 * l1 + 1, dtype=torch.float64)
    y = torch.randn(3, 2 * l2 + 1, dtype=torch.float64)
    packed = torch.einsum("na,nb,abm->nm", x, y, packed_coupling(*path))
    full = path_normalisation(*path) * irreducible_product(unpack(x, l1), l1, unpack(y, l2), l2, l3)
    assert (unpack(packed, l3) - full).abs().max() < TOLERANCE


def test_forbidden_path_is_refused():
    with pytest.raises(ValueError, match="1 x 1 -> 1"):
        irreducible_product(random_ict(1, 1, 0), 1, random_ict(1, 1, 1), 1, 1)


@pytest.mark.parametrize("max_rank", [0, 1, 3, 4])
def test_model_edge_harmonics_equal_packed_reference(max_rank, float64):
    r = random_units(11, 5)
    stacked = EdgeHarmonics(max_rank)(r)
    reference = torch.cat([pack(cartesian_harmonic(r, l), l) for l in range(max_rank + 1)], dim=-1)
    assert (stacked - reference).abs().max() < TOLERANCE
