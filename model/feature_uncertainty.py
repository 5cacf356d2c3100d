"""Uncertainty of one potential from its own features, without an ensemble.

Every readout of the potential reads the rank-0 node features of its layer, so an atom's energy is a
function of ``phi`` ``[d]``, the invariant features of all layers (``d = channels * num_interactions``).
Where ``phi`` lies far from the features the model was trained on, the model extrapolates (the last-layer
view of Zaverkin and Kästner's gradient-feature uncertainties, and of Janet et al.'s latent distances).

The distance used is Mahalanobis's, per species ``s``, to a Gaussian fitted to the training atoms:

    u = sqrt((phi - mu_s)^T P_s (phi - mu_s) / d),    P_s = (Sigma_s')^-1

where ``Sigma_s'`` is the species' feature covariance shrunk towards the covariance of all species
(``d`` pseudo-atoms of it, so a species with few atoms gets a usable estimate) plus a ridge of
``RIDGE`` times its mean variance. ``u`` is about 1 for a training atom. It becomes a force deviation
in eV/Å by a ``scale`` fitted on the validation atoms by likelihood, as
:mod:`tace_aiida.calibration` does for an ensemble: ``s^2 = mean_a |F_dft - F|^2 / u_a^2``, so that
``s u_a`` is the expected error of atom ``a``'s force (the square root of its summed component variances).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch

from . import keys
from .data import to_device
from .evaluation import batches
from .potential import CartesianTensorPotential

Tensor = torch.Tensor

#: Ridge added to every species' covariance, as a fraction of its mean variance.
RIDGE = 1e-3


@dataclass
class FeatureUncertainty:
    """Per-species feature Gaussians and the scale that turns distances into eV/Å.

    ``mean`` ``[n_species, d]`` and ``precision`` ``[n_species, d, d]`` follow the model's species
    order; ``scale`` (eV/Å) maps the distance ``u`` (no unit) to an expected force error.
    """

    mean: Tensor
    precision: Tensor
    scale: float

    def distances(self, features: Tensor, species: Tensor) -> Tensor:
        """``u`` ``[..., n_atoms]`` of node features ``[..., n_atoms, d]`` of atoms of ``species`` ``[n_atoms]``."""
        mean, precision = self.mean.to(features), self.precision.to(features)
        squared = features.new_zeros(features.shape[:-1])
        for index in species.unique():  # species by species: memory O(n_atoms d), not O(n_atoms d^2)
            atoms = species == index
            centred = features[..., atoms, :] - mean[index]
            squared[..., atoms] = ((centred @ precision[index]) * centred).sum(dim=-1)
        return (squared.clamp_min(0.0) / features.shape[-1]).sqrt()

    def forces_std(self, features: Tensor, species: Tensor) -> Tensor:
        """Expected force error per atom ``[..., n_atoms]`` (eV/Å)."""
        return self.scale * self.distances(features, species)

    def state(self) -> dict:
        """Tensors and numbers for a checkpoint."""
        return {"mean": self.mean.detach().cpu(), "precision": self.precision.detach().cpu(), "scale": float(self.scale)}

    @classmethod
    def from_state(cls, state: dict) -> FeatureUncertainty:
        return cls(mean=state["mean"], precision=state["precision"], scale=float(state["scale"]))


class FeatureMoments:
    """Running count, sum ``[n_species, d]`` and sum of outer products ``[n_species, d, d]`` of node features
    per species (float64), so that statistics over any number of atoms take O(d^2) memory."""

    def __init__(self, num_species: int, width: int) -> None:
        self.count = torch.zeros(num_species, dtype=torch.float64)
        self.total = torch.zeros(num_species, width, dtype=torch.float64)
        self.outer = torch.zeros(num_species, width, width, dtype=torch.float64)

    def add(self, features: Tensor, species: Tensor) -> None:
        """Add atoms' features ``[n, d]`` of ``species`` ``[n]`` (indices)."""
        features, species = features.detach().double().cpu(), species.cpu()
        self.count.index_add_(0, species, torch.ones_like(species, dtype=torch.float64))
        self.total.index_add_(0, species, features)
        self.outer.index_add_(0, species, features[:, :, None] * features[:, None, :])

    def gaussians(self, ridge: float = RIDGE) -> tuple[Tensor, Tensor]:
        """Means ``[n_species, d]`` and precisions ``[n_species, d, d]`` per species.

        Each species' covariance is shrunk towards the pooled one with a weight of ``d`` atoms; a species
        without atoms takes the pooled mean and covariance.
        """
        width = self.total.shape[-1]
        atoms = self.count.sum()
        pooled_mean = self.total.sum(dim=0) / atoms
        pooled = self.outer.sum(dim=0) / atoms - torch.outer(pooled_mean, pooled_mean)
        means, precisions = [], []
        for count, total, outer in zip(self.count, self.total, self.outer, strict=True):
            mean = total / count if count > 0 else pooled_mean
            covariance = outer / count - torch.outer(mean, mean) if count > 1 else torch.zeros_like(pooled)
            shrunk = (count * covariance + width * pooled) / (count + width)
            shrunk = shrunk + ridge * shrunk.diagonal().mean() * torch.eye(width, dtype=shrunk.dtype)
            means.append(mean)
            precisions.append(torch.linalg.inv(shrunk))
        return torch.stack(means), torch.stack(precisions)


def species_gaussians(features: Tensor, species: Tensor, num_species: int, ridge: float = RIDGE) -> tuple[Tensor, Tensor]:
    """:meth:`FeatureMoments.gaussians` of ``features`` ``[n, d]`` of ``species`` ``[n]``."""
    moments = FeatureMoments(num_species, features.shape[-1])
    moments.add(features, species)
    return moments.gaussians(ridge)


def likelihood_scale(distances: Tensor, force_errors: Tensor) -> float:
    """``s`` (eV/Å) of largest likelihood for force errors ``[n, 3]`` (eV/Å) given distances ``[n]``."""
    keep = distances > 0
    if not bool(keep.any()):
        raise ValueError("no atom with a nonzero feature distance to fit the uncertainty scale on")
    ratio = (force_errors[keep] ** 2).sum(dim=-1) / distances[keep] ** 2
    return float(ratio.mean().sqrt())


def node_outputs(model: CartesianTensorPotential, graphs: Sequence[dict[str, Tensor]], batch_size: int,
                 device: torch.device | str) -> Iterator[tuple[Tensor, Tensor, Tensor, Tensor]]:
    """Per batch of ``graphs``: node features ``[n, d]``, species ``[n]``, force errors ``[n, 3]`` (eV/Å) and a
    mask ``[n]`` of the atoms with force labels."""
    dtype = next(model.parameters()).dtype
    for batch in batches(graphs, batch_size):
        batch = {k: (v.to(dtype) if v.is_floating_point() else v) for k, v in to_device(batch, device).items()}
        out = model(batch, compute_forces=True, compute_descriptors=True)
        labelled = batch[keys.HAS_FORCES].bool()[batch[keys.BATCH]]
        yield out.node_features.detach(), batch[keys.SPECIES], (batch[keys.FORCES] - out.forces).detach(), labelled


def fit_feature_uncertainty(model: CartesianTensorPotential, train: Sequence[dict[str, Tensor]],
                            valid: Sequence[dict[str, Tensor]], batch_size: int = 10,
                            device: torch.device | str = "cpu") -> FeatureUncertainty:
    """Gaussians on the ``train`` atoms' features and the scale fitted on the ``valid`` atoms' force errors.

    Without validation graphs the scale is fitted on the training atoms, which underestimates errors.
    """
    moments = FeatureMoments(len(model.config.atomic_numbers), model.config.channels * model.config.num_interactions)
    for features, species, _, _ in node_outputs(model, train, batch_size, device):
        moments.add(features, species)
    fitted = FeatureUncertainty(*moments.gaussians(), scale=1.0)
    distances, errors = [], []
    for features, species, error, labelled in node_outputs(model, valid or train, batch_size, device):
        distances.append(fitted.distances(features.double(), species)[labelled].cpu())
        errors.append(error.double()[labelled].cpu())
    fitted.scale = likelihood_scale(torch.cat(distances), torch.cat(errors))
    return fitted
