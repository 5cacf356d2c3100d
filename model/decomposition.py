"""Tensor-decomposition fast path (TDN): low-rank CP factors of the stacked Cartesian product.

Stack all ranks 0..L of a packed ICT feature into one vector (``(L+1)**2`` long, as in
:mod:`.cartesian`). With one weight for all paths (path-weight sharing), the whole multi-path
product ``x (x) y -> z`` is one bilinear map ``M[i, j, q]``, the sum of every parity-even path's
normalised coupling. A CANDECOMP/PARAFAC decomposition of rank R,
``M[i, j, q] ~ sum_r A[i, r] B[j, r] C[q, r]``, turns it into
``z = C @ ((A.T @ x) * (B.T @ y))``: ``O(R (dx + dy + dz))`` work instead of ``O(dx dy dz)``.

The factors are fitted to the exact map (alternating least squares in float64, deterministic) once
and kept in the user's cache folder, then frozen or trained. Unless R reaches the map's CP rank the product is
only approximately equivariant; :func:`fit_cp_factors` reports the relative fit error.
"""

from __future__ import annotations

import logging
import os
import pickle
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from functools import cache
from pathlib import Path

import torch
from torch import nn

from .cartesian import is_allowed_path, packed_coupling, rank_slices

Tensor = torch.Tensor
logger = logging.getLogger(__name__)

#: ALS stops when the relative error falls below this or stops improving.
FIT_TOLERANCE = 1e-13
FIT_ITERATIONS = 3000
FIT_RESTARTS = 3
#: A fit this close is exact to float64 working precision; no further restarts.
EXACT = 1e-10
#: An exact fit is retried at ranks this much lower, each with this many iterations, while it stays exact.
SEARCH_STEP = 4
SEARCH_ITERATIONS = 1000
#: Bump when the fit changes, so that cached factors of an older fit are not read.
FIT_VERSION = 1
#: Environment variable naming the folder of cached factors.
CACHE_ENV = "TACE_CP_CACHE"


def default_cp_rank(max_rank: int) -> int:
    """The published schedule ``R = 7 L**2`` (TDN), at least 1."""
    return max(7 * max_rank**2, 1)


@cache
def stacked_product_map(rank_x: int, rank_y: int, rank_out: int) -> Tensor:
    """All parity-even paths ``l1 <= rank_x, l2 <= rank_y -> l3 <= rank_out`` summed into one map
    ``[(rank_x+1)**2, (rank_y+1)**2, (rank_out+1)**2]`` (float64)."""
    product = torch.zeros((rank_x + 1) ** 2, (rank_y + 1) ** 2, (rank_out + 1) ** 2, dtype=torch.float64)
    slices_x, slices_y, slices_out = rank_slices(rank_x), rank_slices(rank_y), rank_slices(rank_out)
    for l1 in range(rank_x + 1):
        for l2 in range(rank_y + 1):
            for l3 in range(rank_out + 1):
                if is_allowed_path(l1, l2, l3):
                    product[slices_x[l1], slices_y[l2], slices_out[l3]] += packed_coupling(l1, l2, l3)
    return product


def _reconstruct(a: Tensor, b: Tensor, c: Tensor) -> Tensor:
    return torch.einsum("ir,jr,kr->ijk", a, b, c)


def _als(target: Tensor, rank: int, seed: int, iterations: int = FIT_ITERATIONS) -> tuple[tuple[Tensor, Tensor, Tensor], float]:
    """One alternating-least-squares run from a seeded random start; factors and relative error."""
    generator = torch.Generator().manual_seed(seed)
    factors = [torch.randn(size, rank, generator=generator, dtype=torch.float64) for size in target.shape]
    equations = ("ijk,jr,kr->ir", "ijk,ir,kr->jr", "ijk,ir,jr->kr")
    norm, previous = target.norm(), float("inf")
    for iteration in range(iterations):
        for mode, equation in enumerate(equations):
            others = [factors[other] for other in range(3) if other != mode]
            gram = (others[0].T @ others[0]) * (others[1].T @ others[1])
            factors[mode] = torch.einsum(equation, target, *others) @ torch.linalg.pinv(gram, hermitian=True)
        if iteration % 25 == 24:
            error = float((_reconstruct(*factors) - target).norm() / norm)
            if error < FIT_TOLERANCE or not error < previous * (1 - 1e-6):
                break
            previous = error
    error = float((_reconstruct(*factors) - target).norm() / norm)
    return (factors[0], factors[1], factors[2]), error


def cp_rank_bound(shape: tuple[int, ...] | torch.Size) -> int:
    """An upper bound on the CP rank of any ``[dx, dy, dz]`` tensor: the smallest product of two sizes
    (a rank above it only costs time)."""
    dx, dy, dz = shape
    return min(dx * dy, dx * dz, dy * dz)


def _smallest_exact(target: Tensor, cp_rank: int, fit):
    """The fit of the lowest rank below ``cp_rank`` (in steps of :data:`SEARCH_STEP`) that is still exact:
    a lower rank costs less per edge and loses nothing."""
    for candidate in range(cp_rank - SEARCH_STEP, max(target.shape) - 1, -SEARCH_STEP):
        trial = _als(target, candidate, seed=0, iterations=SEARCH_ITERATIONS)
        if not trial[1] < EXACT:
            break
        fit = trial
    return fit


def cache_file(rank_x: int, rank_y: int, rank_out: int, cp_rank: int) -> Path:
    """Where fitted factors are kept: ``$TACE_CP_CACHE``, else ``$XDG_CACHE_HOME`` (or ``~/.cache``)
    ``/tace-aiida/cp-factors``."""
    user_cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "tace-aiida" / "cp-factors"
    folder = Path(os.environ.get(CACHE_ENV) or user_cache)
    return folder / f"v{FIT_VERSION}-{rank_x}-{rank_y}-{rank_out}-R{cp_rank}.pt"


@cache
def fit_cp_factors(rank_x: int, rank_y: int, rank_out: int, cp_rank: int) -> tuple[Tensor, Tensor, Tensor, float]:
    """:func:`fit_factors`, read from :func:`cache_file` when an earlier process fitted them (a fit of the
    default architecture takes about 20 s), else fitted and written there (atomically; a folder that
    cannot be written only costs the fit)."""
    path = cache_file(rank_x, rank_y, rank_out, cp_rank)
    try:
        stored = torch.load(path, weights_only=True)
        return stored["x"], stored["y"], stored["out"], float(stored["error"])
    except (OSError, RuntimeError, KeyError, EOFError, pickle.UnpicklingError) as error:
        if path.exists():
            logger.warning("refitting the CP factors: cannot read %s (%s)", path, error)
    a, b, c, fit_error = fit_factors(rank_x, rank_y, rank_out, cp_rank)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_suffix(f".{os.getpid()}.partial")
        torch.save({"x": a, "y": b, "out": c, "error": torch.tensor(fit_error)}, partial)
        os.replace(partial, path)
    except OSError as error:
        logger.warning("cannot cache the CP factors in %s: %s", path.parent, error)
    return a, b, c, fit_error


def fit_factors(rank_x: int, rank_y: int, rank_out: int, cp_rank: int) -> tuple[Tensor, Tensor, Tensor, float]:
    """CP factors ``A [dx, R]``, ``B [dy, R]``, ``C [dz, R]`` of :func:`stacked_product_map` and the
    relative Frobenius error of the fit; the best of a few seeded ALS runs, balanced in norm.
    R is ``cp_rank``, or :func:`cp_rank_bound` where that is smaller; where R fits exactly, the lowest
    rank found to fit exactly as well."""
    target = stacked_product_map(rank_x, rank_y, rank_out)
    cp_rank = min(cp_rank, cp_rank_bound(target.shape))
    best = _als(target, cp_rank, seed=0)
    for seed in range(1, FIT_RESTARTS):
        if best[1] < EXACT:
            break
        best = min(best, _als(target, cp_rank, seed), key=lambda fit: fit[1])
    if best[1] < EXACT:
        best = _smallest_exact(target, cp_rank, best)
    (a, b, c), error = best
    scale = (a.norm(dim=0) * b.norm(dim=0) * c.norm(dim=0)).clamp_min(1e-300) ** (1 / 3)
    a, b, c = (factor / factor.norm(dim=0).clamp_min(1e-300) * scale for factor in (a, b, c))
    return a, b, c, error


#: Within :func:`stored_factor_ranks`: (rank_x, rank_y, rank_out) -> R of the factors about to be loaded.
_stored_ranks: ContextVar[dict[tuple[int, int, int], int] | None] = ContextVar("stored_cp_ranks", default=None)


@contextmanager
def stored_factor_ranks(state_dict: dict[str, Tensor]) -> Iterator[None]:
    """While a model is built to take ``state_dict`` (a checkpoint's), its :class:`CPProduct` s make zero factors
    of the stored shapes instead of fitting (up to 20 s each on a machine without the cache); loading the state
    dict then fills them in."""
    ranks = {}
    for key, factor_x in state_dict.items():
        if key.endswith("factor_x"):
            prefix = key[: -len("factor_x")]
            dims = (factor_x.shape[-2], state_dict[prefix + "factor_y"].shape[-2],
                    state_dict[prefix + "factor_out"].shape[-2])
            ranks[tuple(round(d**0.5) - 1 for d in dims)] = factor_x.shape[-1]
    token = _stored_ranks.set(ranks)
    try:
        yield
    finally:
        _stored_ranks.reset(token)


class CPProduct(nn.Module):
    """``z = C @ ((A.T x) * (B.T y))``: the CP-decomposed stacked product, per channel.

    The factors are fitted at construction (unless a checkpoint's are about to be loaded,
    :func:`stored_factor_ranks`); ``trainable`` makes them parameters, otherwise they
    are buffers saved with the model (so a checkpoint always evaluates with the factors it was
    trained with). The three steps are exposed separately so that callers can move ``left`` and
    ``out`` off the edges (see :class:`.blocks.DecomposedInteractionBlock`).
    """

    def __init__(self, rank_x: int, rank_y: int, rank_out: int, cp_rank: int, trainable: bool) -> None:
        super().__init__()
        stored = (_stored_ranks.get() or {}).get((rank_x, rank_y, rank_out))
        if stored is None:
            a, b, c, _ = fit_cp_factors(rank_x, rank_y, rank_out, cp_rank)
        else:
            a, b, c = (torch.zeros((rank + 1) ** 2, stored) for rank in (rank_x, rank_y, rank_out))
        dtype = torch.get_default_dtype()
        for name, value in (("factor_x", a), ("factor_y", b), ("factor_out", c)):
            value = value.to(dtype).clone()
            if trainable:
                self.register_parameter(name, nn.Parameter(value))
            else:
                self.register_buffer(name, value)

    def left(self, x: Tensor) -> Tensor:
        """``[..., n, C, dx] -> [..., n, C, R]``."""
        return torch.einsum("...ncd,...dr->...ncr", x, self.factor_x)

    def right(self, y: Tensor) -> Tensor:
        """``[..., n, dy] -> [..., n, R]`` (channel-independent inputs such as edge harmonics)."""
        return torch.einsum("...nd,...dr->...nr", y, self.factor_y)

    def right_channels(self, y: Tensor) -> Tensor:
        """``[..., n, C, dy] -> [..., n, C, R]``."""
        return torch.einsum("...ncd,...dr->...ncr", y, self.factor_y)

    def out(self, z: Tensor) -> Tensor:
        """``[..., n, C, R] -> [..., n, C, dz]``."""
        return torch.einsum("...ncr,...qr->...ncq", z, self.factor_out)

    def forward(self, x: Tensor, y: Tensor) -> Tensor:
        """Per-channel product of ``x`` ``[..., n, C, dx]`` and ``y`` ``[..., n, C, dy]``, ``[..., n, C, dz]``."""
        return self.out(self.left(x) * self.right_channels(y))
