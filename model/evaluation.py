"""Errors of a potential against labelled graphs: energy, force and stress MAE / RMSE."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from . import keys
from .data import collate, to_device
from .potential import CartesianTensorPotential

Tensor = torch.Tensor


def batches(graphs: Sequence[dict[str, Tensor]], batch_size: int) -> list[dict[str, Tensor]]:
    """Consecutive batches of ``batch_size`` graphs."""
    return [collate(graphs[start : start + batch_size]) for start in range(0, len(graphs), batch_size)]


class ErrorAccumulator:
    """Running sums of absolute and squared errors per label kind."""

    def __init__(self) -> None:
        self.sums: dict[str, list[float]] = {}

    def add(self, name: str, error: Tensor) -> None:
        if error.numel() == 0:
            return
        totals = self.sums.setdefault(name, [0.0, 0.0, 0])
        totals[0] += float(error.abs().sum())
        totals[1] += float((error**2).sum())
        totals[2] += error.numel()

    def metrics(self) -> dict[str, float]:
        """``{name}_mae`` and ``{name}_rmse`` for every label kind seen."""
        result = {}
        for name, (absolute, squared, count) in self.sums.items():
            result[f"{name}_mae"] = absolute / count
            result[f"{name}_rmse"] = (squared / count) ** 0.5
        return result


def evaluate(
    model: CartesianTensorPotential,
    graphs: Sequence[dict[str, Tensor]],
    batch_size: int = 10,
    device: str | torch.device = "cpu",
) -> dict[str, float]:
    """Errors of ``model`` on labelled ``graphs``.

    Keys: ``energy_per_atom_*`` (eV/atom), ``energy_*`` (eV), ``forces_*`` (eV/Å per component),
    ``stress_*`` (eV/Å^3 per component), ``dipole_*`` (e Å per component) and ``polarizability_*``
    (Å^3 per component) of models with those heads (or ``field_dipole``: -dE/dF and its field derivative), and
    ``born_charges_*`` (e per component) of ``field_dipole`` models, each ``_mae`` and ``_rmse``; only for labels present.
    """
    errors = ErrorAccumulator()
    dtype = next(model.parameters()).dtype
    for batch in batches(graphs, batch_size):
        batch = {k: (v.to(dtype) if v.is_floating_point() else v) for k, v in to_device(batch, device).items()}
        has_stress = bool(batch[keys.HAS_STRESS].any())
        response = model.config.field_dipole and any(bool(batch[key].any()) for key in (keys.HAS_POLARIZABILITY, keys.HAS_BORN_CHARGES)
                                                     if key in batch)
        out = model(batch, compute_forces=True, compute_stress=has_stress, compute_field_response=response)
        energy_mask = batch[keys.HAS_ENERGY].bool()
        energy_error = (out.energy - batch[keys.ENERGY]).detach()[energy_mask]
        errors.add("energy", energy_error)
        errors.add("energy_per_atom", energy_error / batch[keys.NUM_ATOMS][energy_mask])
        force_mask = batch[keys.HAS_FORCES].bool()[batch[keys.BATCH]]
        errors.add("forces", (out.forces - batch[keys.FORCES]).detach()[force_mask])
        if has_stress:
            errors.add("stress", (out.stress - batch[keys.STRESS]).detach()[batch[keys.HAS_STRESS].bool()])
        for name, predicted, present in ((keys.DIPOLE, out.dipole, keys.HAS_DIPOLE),
                                     (keys.POLARIZABILITY, out.polarizability, keys.HAS_POLARIZABILITY)):
            if predicted is not None and name in batch and bool(batch[present].any()):
                errors.add(name, (predicted - batch[name]).detach()[batch[present].bool()])
        if out.born_charges is not None and keys.BORN_CHARGES in batch:
            atom_mask = batch[keys.HAS_BORN_CHARGES].bool()[batch[keys.BATCH]]
            errors.add(keys.BORN_CHARGES, (out.born_charges - batch[keys.BORN_CHARGES]).detach()[atom_mask])
    return errors.metrics()
