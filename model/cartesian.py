"""Irreducible Cartesian tensors (ICTs): harmonics, products and their packed storage.

A rank-l ICT is a tensor with l indices in 3-D that is symmetric in all of them and has zero
trace over every pair. It has 2l+1 independent components, although it has 3**l entries when
stored in full.

This module has two layers:

* a *reference* layer on full tensors (``[..., 3, ..., 3]`` with ``rank`` trailing axes): the
  Cartesian harmonics of a unit vector by their recursion, the traceless projection, and the
  irreducible product ``l1 x l2 -> l3`` (contract, symmetrise, remove traces). It is written for
  clarity, runs in float64 and is used once to build coefficients and in the tests.
* a *packed* layer used by the model: every rank-l ICT is stored by its 2l+1 coordinates in a fixed
  orthonormal basis ``U_l`` (``[3**l, 2l+1]``) of the symmetric-traceless subspace, and every
  product path becomes a coupling array ``[2l1+1, 2l2+1, 2l3+1]`` computed from the reference
  product. Packing is exact: ``T = U_l @ x`` and ``x = U_l.T @ T`` for every ICT ``T``.

Normalisation: products are scaled per path so that the product of the harmonics of one unit
vector is the harmonic of the output rank, ``(T^l1(r) x T^l2(r)) -> l3 = T^l3(r)``.
"""

from __future__ import annotations

import itertools
import math
from functools import cache

import torch

Tensor = torch.Tensor


def _double_factorial(n: int) -> int:
    """n!! with the convention (-1)!! = 0!! = 1."""
    return math.prod(range(n, 0, -2)) if n > 0 else 1


def symmetrise(tensor: Tensor, rank: int) -> Tensor:
    """Average of ``tensor`` over all permutations of its last ``rank`` axes."""
    if rank < 2:
        return tensor
    lead = list(range(tensor.dim() - rank))
    axes = range(len(lead), tensor.dim())
    permuted = [tensor.permute(*lead, *perm) for perm in itertools.permutations(axes)]
    return torch.stack(permuted).mean(dim=0)


def trace_last_pair(tensor: Tensor) -> Tensor:
    """Contract the last two axes of ``tensor`` with each other."""
    return tensor.diagonal(dim1=-2, dim2=-1).sum(-1)


def _append_delta(tensor: Tensor) -> Tensor:
    """Outer product ``tensor (x) I``: two new trailing axes carrying the identity."""
    eye = torch.eye(3, dtype=tensor.dtype, device=tensor.device)
    return tensor[..., None, None] * eye


def detrace(tensor: Tensor, rank: int) -> Tensor:
    """Traceless part of a tensor symmetric in its last ``rank`` axes.

    Subtracts, for k = 1 .. rank//2, the k-fold traces times the symmetrised products of k deltas
    with coefficient ``(-1)**(k+1) (2n-2k-1)!! / (2n-1)!!`` summed over all distinct placements.
    """
    result = tensor.clone()
    traced = tensor
    for k in range(1, rank // 2 + 1):
        traced = trace_last_pair(traced)
        coefficient = (-1) ** k * _double_factorial(2 * rank - 2 * k - 1) / _double_factorial(2 * rank - 1)
        placements = math.factorial(rank) // (2**k * math.factorial(k) * math.factorial(rank - 2 * k))
        with_deltas = traced
        for _ in range(k):
            with_deltas = _append_delta(with_deltas)
        result = result + coefficient * placements * symmetrise(with_deltas, rank)
    return result


def cartesian_harmonic(unit_vector: Tensor, rank: int) -> Tensor:
    """Full rank-``rank`` Cartesian harmonic ``T^l(r)`` of unit vectors ``[..., 3]``.

    Uses ``T^(l+1) = (2l+1)/(l+1) Sym(r (x) T^l) - l/(l+1) Sym(I (x) T^(l-1))``, ``T^0 = 1``,
    ``T^1 = r``. Returns ``[..., 3, ..., 3]`` with ``rank`` trailing axes.
    """
    previous = torch.ones(unit_vector.shape[:-1], dtype=unit_vector.dtype, device=unit_vector.device)
    if rank == 0:
        return previous
    current = unit_vector
    for l in range(1, rank):
        with_vector = current[..., None] * unit_vector.view(*unit_vector.shape[:-1], *([1] * l), 3)
        with_delta = _append_delta(previous)
        following = (2 * l + 1) / (l + 1) * symmetrise(with_vector, l + 1) - l / (l + 1) * symmetrise(
            with_delta, l + 1
        )
        previous, current = current, following
    return current


def is_allowed_path(l1: int, l2: int, l3: int) -> bool:
    """True for the parity-even couplings ``|l1-l2| <= l3 <= l1+l2`` with ``l1+l2+l3`` even."""
    return abs(l1 - l2) <= l3 <= l1 + l2 and (l1 + l2 + l3) % 2 == 0


def irreducible_product(first: Tensor, l1: int, second: Tensor, l2: int, l3: int) -> Tensor:
    """Un-normalised irreducible product ``(first (x) second) -> l3`` of full ICTs.

    Contracts the last ``k = (l1+l2-l3)/2`` axes of ``first`` with the first ``k`` rank axes of
    ``second``, then symmetrises and removes traces. Both inputs carry the same leading batch axes.
    """
    if not is_allowed_path(l1, l2, l3):
        raise ValueError(f"no parity-even product path ({l1} x {l2} -> {l3})")
    k = (l1 + l2 - l3) // 2
    batch = first.dim() - l1
    letters = "abcdefghijklmnopqrstuvw"
    batch_idx = "".join(letters[:batch])
    free_first = letters[batch : batch + l1 - k]
    shared = letters[batch + l1 - k : batch + l1]
    free_second = letters[batch + l1 : batch + l1 + l2 - k]
    equation = f"{batch_idx}{free_first}{shared},{batch_idx}{shared}{free_second}->{batch_idx}{free_first}{free_second}"
    contracted = torch.einsum(equation, first, second)
    return detrace(symmetrise(contracted, l3), l3)


@cache
def packed_basis(rank: int) -> Tensor:
    """Orthonormal basis ``U_l`` of rank-l ICTs, ``[3**l, 2l+1]``, float64.

    Built deterministically: the traceless parts of the symmetrised monomials
    ``e_x^a e_y^b e_z^c`` (a+b+c = l, in lexicographic order from x^l) go through Gram-Schmidt,
    keeping the first 2l+1 independent ones. Loaded weights therefore mean the same on every
    machine.
    """
    if rank == 0:
        return torch.ones(1, 1, dtype=torch.float64)
    axes = torch.eye(3, dtype=torch.float64)
    basis: list[Tensor] = []
    for a in range(rank, -1, -1):
        for b in range(rank - a, -1, -1):
            c = rank - a - b
            factors = [axes[0]] * a + [axes[1]] * b + [axes[2]] * c
            monomial = factors[0]
            for factor in factors[1:]:
                monomial = monomial[..., None] * factor
            candidate = detrace(symmetrise(monomial, rank), rank).reshape(-1)
            for vector in basis:
                candidate = candidate - (vector @ candidate) * vector
            norm = candidate.norm()
            if norm > 1e-8:
                basis.append(candidate / norm)
    if len(basis) != 2 * rank + 1:
        raise RuntimeError(f"packed basis of rank {rank} has {len(basis)} vectors, expected {2 * rank + 1}")
    return torch.stack(basis, dim=1)


def pack(tensor: Tensor, rank: int) -> Tensor:
    """Full ICTs ``[..., 3, ..., 3]`` -> packed coordinates ``[..., 2l+1]``."""
    flat = tensor.reshape(*tensor.shape[: tensor.dim() - rank], 3**rank)
    return flat @ packed_basis(rank).to(tensor)


def unpack(packed: Tensor, rank: int) -> Tensor:
    """Packed coordinates ``[..., 2l+1]`` -> full ICTs ``[..., 3, ..., 3]``."""
    flat = packed @ packed_basis(rank).to(packed).T
    return flat.reshape(*packed.shape[:-1], *([3] * rank))


_REFERENCE_DIRECTION = torch.tensor([0.3, -0.5, 0.8], dtype=torch.float64)


@cache
def path_normalisation(l1: int, l2: int, l3: int) -> float:
    """Factor making ``(T^l1(r) x T^l2(r)) -> l3 = T^l3(r)`` for the averaging convention."""
    unit = _REFERENCE_DIRECTION / _REFERENCE_DIRECTION.norm()
    raw = irreducible_product(cartesian_harmonic(unit, l1), l1, cartesian_harmonic(unit, l2), l2, l3)
    target = cartesian_harmonic(unit, l3)
    return float((target * target).sum() / (target * raw).sum())


@cache
def packed_coupling(l1: int, l2: int, l3: int) -> Tensor:
    """Coupling ``C[a, b, m]`` of the normalised product on packed ICTs, ``[2l1+1, 2l2+1, 2l3+1]``.

    ``(x (x) y) -> l3`` in packed coordinates is ``einsum('a,b,abm->m', x, y, C)``. float64.
    """
    first = unpack(torch.eye(2 * l1 + 1, dtype=torch.float64), l1)
    second = unpack(torch.eye(2 * l2 + 1, dtype=torch.float64), l2)
    first_grid = first.reshape(2 * l1 + 1, 1, *([3] * l1)).expand(-1, 2 * l2 + 1, *([3] * l1))
    second_grid = second.reshape(1, 2 * l2 + 1, *([3] * l2)).expand(2 * l1 + 1, -1, *([3] * l2))
    products = irreducible_product(first_grid, l1, second_grid, l2, l3)
    return path_normalisation(l1, l2, l3) * pack(products, l3)


def rank_slices(max_rank: int) -> list[slice]:
    """Where rank l lives in a stacked packed vector of ranks 0..max_rank (``(L+1)**2`` long)."""
    return [slice(l * l, (l + 1) * (l + 1)) for l in range(max_rank + 1)]


def rank_of_component(max_rank: int) -> Tensor:
    """Rank of each component of a stacked packed vector, ``[(L+1)**2]`` int64."""
    return torch.cat([torch.full((2 * l + 1,), l, dtype=torch.long) for l in range(max_rank + 1)])
