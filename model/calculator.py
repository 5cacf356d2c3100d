"""ASE calculator for one potential or an ensemble, with the ensemble's uncertainty."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from ase import Atoms
from ase.calculators.calculator import Calculator, all_changes
from ase.stress import full_3x3_to_voigt_6_stress

from .checkpoint import load_model
from .data import atoms_to_graph, collate, resolve_device, to_device


class TACECalculator(Calculator):
    """Energy (eV), forces (eV/Å) and stress (eV/Å^3, periodic cells) from one or more checkpoints.

    With several checkpoints (an ensemble) the results are the members' means, and these extra
    results measure how much the members disagree:

    * ``energy_std`` (eV) and ``energy_std_per_atom`` (eV/atom): standard deviation of the energy;
    * ``forces_std`` [n_atoms] (eV/Å): per atom, ``sqrt(mean_m |F_m - <F>|^2)``;
    * ``max_force_std`` (eV/Å): the largest of those, DP-GEN's model deviation of a frame;
    * ``stress_std`` (eV/Å^3, periodic cells): largest standard deviation of a stress component.

    ``descriptors`` (always computed) are the first member's per-structure means of the invariant
    node features, a fingerprint for diversity selection.
    """

    implemented_properties = [
        "energy", "free_energy", "energies", "forces", "stress",
        "energy_std", "energy_std_per_atom", "forces_std", "max_force_std", "stress_std", "descriptors",
    ]

    def __init__(
        self,
        checkpoints: str | Path | Sequence[str | Path],
        device: str = "auto",
        dtype: str | None = None,
        **kwargs,
    ) -> None:
        super().__init__(**kwargs)
        paths = [checkpoints] if isinstance(checkpoints, (str, Path)) else list(checkpoints)
        if not paths:
            raise ValueError("TACECalculator needs at least one checkpoint")
        self.device = resolve_device(device)
        torch_dtype = getattr(torch, dtype) if dtype else None
        self.models = [load_model(path, self.device, torch_dtype)[0] for path in paths]
        for model in self.models:
            for parameter in model.parameters():
                parameter.requires_grad_(False)
        self.checkpoints = [str(p) for p in paths]

    def calculate(self, atoms: Atoms | None = None, properties=None, system_changes=all_changes) -> None:
        super().calculate(atoms, properties, system_changes)
        periodic = bool(self.atoms.pbc.all())
        members = [self._member_results(model, self.atoms, periodic) for model in self.models]
        energies = np.array([m["energy"] for m in members])
        forces = np.stack([m["forces"] for m in members])
        mean_forces = forces.mean(axis=0)
        forces_std = np.sqrt(((forces - mean_forces) ** 2).sum(axis=-1).mean(axis=0))
        self.results = {
            "energy": float(energies.mean()),
            "free_energy": float(energies.mean()),
            "energies": np.mean([m["energies"] for m in members], axis=0),
            "forces": mean_forces,
            "energy_std": float(energies.std()),
            "energy_std_per_atom": float(energies.std()) / len(self.atoms),
            "forces_std": forces_std,
            "max_force_std": float(forces_std.max()),
            "descriptors": members[0]["descriptors"],
        }
        if periodic:
            stresses = np.stack([m["stress"] for m in members])
            self.results["stress"] = full_3x3_to_voigt_6_stress(stresses.mean(axis=0))
            self.results["stress_std"] = float(stresses.std(axis=0).max())

    def _member_results(self, model, atoms: Atoms, periodic: bool) -> dict[str, np.ndarray]:
        dtype = next(model.parameters()).dtype
        graph = atoms_to_graph(atoms, model.config.atomic_numbers, model.config.r_max, dtype=dtype)
        batch = to_device(collate([graph]), self.device)
        out = model(batch, compute_forces=True, compute_stress=periodic, compute_descriptors=True)
        result = {
            "energy": out.energy.item(),
            "energies": out.node_energy.detach().cpu().numpy(),
            "forces": out.forces.detach().cpu().numpy(),
            "descriptors": out.descriptors[0].detach().cpu().numpy(),
        }
        if periodic:
            result["stress"] = out.stress[0].detach().cpu().numpy()
        return result
