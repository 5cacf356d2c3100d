"""Radial part of an edge: Bessel basis, smooth cutoff envelope, and the MLP giving path weights."""

from __future__ import annotations

import math
from itertools import pairwise

import torch
from torch import nn

Tensor = torch.Tensor


class PolynomialEnvelope(nn.Module):
    """``u(x) = 1 - (p+1)(p+2)/2 x^p + p(p+2) x^(p+1) - p(p+1)/2 x^(p+2)`` for ``x = r/r_c < 1``, else 0.

    Goes to zero at the cutoff with continuous first and second derivatives.
    """

    def __init__(self, r_max: float, p: int = 5) -> None:
        super().__init__()
        self.r_max = r_max
        self.p = p

    def forward(self, lengths: Tensor) -> Tensor:
        """``lengths`` [..., n_edges] in Å -> envelope [..., n_edges]."""
        p = self.p
        x = lengths / self.r_max
        value = 1.0 - (p + 1) * (p + 2) / 2 * x**p + p * (p + 2) * x ** (p + 1) - p * (p + 1) / 2 * x ** (p + 2)
        return value * (x < 1.0)


class BesselBasis(nn.Module):
    """``sqrt(2/r_c) sin(n pi r / r_c) / r`` for n = 1 .. num_basis; the frequencies ``n pi / r_c`` are
    trained when ``trainable``, else fixed (rebuilt in the dtype of the lengths, as mace-torch keeps them)."""

    def __init__(self, r_max: float, num_basis: int = 8, trainable: bool = True) -> None:
        super().__init__()
        self.r_max = r_max
        self.num_basis = num_basis
        frequencies = math.pi / r_max * torch.arange(1, num_basis + 1, dtype=torch.get_default_dtype())
        self.frequencies = nn.Parameter(frequencies) if trainable else None
        self.prefactor = math.sqrt(2.0 / r_max)

    def forward(self, lengths: Tensor) -> Tensor:
        """``lengths`` [..., n_edges] in Å -> basis [..., n_edges, num_basis]."""
        frequencies = self.frequencies
        if frequencies is None:
            n = torch.arange(1, self.num_basis + 1, dtype=lengths.dtype, device=lengths.device)
            frequencies = math.pi / self.r_max * n
        r = lengths[..., None]
        return self.prefactor * torch.sin(frequencies.unsqueeze(-2) * r) / r


class RadialEmbedding(nn.Module):
    """Bessel basis times the cutoff envelope: the smooth radial features of an edge."""

    def __init__(self, r_max: float, num_basis: int = 8, envelope_p: int = 5, trainable: bool = True) -> None:
        super().__init__()
        self.basis = BesselBasis(r_max, num_basis, trainable)
        self.envelope = PolynomialEnvelope(r_max, envelope_p)

    def forward(self, lengths: Tensor) -> Tensor:
        """``lengths`` [..., n_edges] in Å -> [..., n_edges, num_basis]."""
        return self.basis(lengths) * self.envelope(lengths)[..., None]


class ScaledSiLU(nn.Module):
    """SiLU rescaled to unit second moment for unit-normal inputs, so deep MLPs keep their scale."""

    scale = 1.6791767923989418

    def forward(self, x: Tensor) -> Tensor:
        return nn.functional.silu(x) * self.scale


class RadialMLP(nn.Module):
    """MLP from radial features to one weight per (channel, path): ``[..., n_edges, channels, n_paths]``.

    No biases: zero radial features (at the cutoff) give zero weights, so messages vanish smoothly.
    Weights start unit-normal and are divided by sqrt(fan-in), which keeps activations O(1).
    """

    def __init__(self, num_basis: int, hidden: tuple[int, ...], num_paths: int, channels: int) -> None:
        super().__init__()
        sizes = (num_basis, *hidden, channels * num_paths)
        self.weights = nn.ParameterList([nn.Parameter(torch.randn(a, b)) for a, b in pairwise(sizes)])
        self.norms = [1.0 / math.sqrt(a) for a in sizes[:-1]]
        self.activation = ScaledSiLU()
        self.num_paths = num_paths
        self.channels = channels

    def forward(self, radial: Tensor) -> Tensor:
        x = radial
        for index, (weight, norm) in enumerate(zip(self.weights, self.norms, strict=True)):
            x = x @ (weight * norm)
            if index < len(self.weights) - 1:
                x = self.activation(x)
        return x.unflatten(-1, (self.channels, self.num_paths))
