"""Uncertainty-driven dynamics: a bias that pulls MD towards configurations the ensemble disagrees on.

The bias energy (Kulichenko et al., Nat. Comput. Sci. 2023) is bounded, so it cannot run away:

    E_bias = A (exp(-s2 / (N B^2)) - 1),    s2 = mean_m (E_m - <E>)^2

with ``A`` the strength (eV, the deepest the bias goes), ``B`` the width (eV per sqrt(atom): the energy
spread per sqrt(atom) at which the bias is about spent), ``N`` atoms and ``E_m`` the members' energies (eV).
Its forces and stress need no extra derivative: ``d s2 / dx = (2/M) sum_m (E_m - <E>) dE_m/dx``, so they are
weighted sums of the members' forces ``[M, N, 3]`` and stresses ``[M, 3, 3]`` that the ensemble already has.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class UncertaintyBias:
    """The bias of strength ``strength`` (eV, > 0) and width ``width`` (eV per sqrt(atom), > 0)."""

    strength: float
    width: float

    def __post_init__(self) -> None:
        for name in ("strength", "width"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and np.isfinite(value) and value > 0):
                raise ValueError(f"uncertainty bias {name} must be a finite number > 0, not {value!r}")

    def terms(self, energies: np.ndarray, forces: np.ndarray, stresses: np.ndarray | None = None,
              ) -> tuple[float, np.ndarray, np.ndarray | None]:
        """Bias energy (eV), forces ``[N, 3]`` (eV/Å) and stress ``[3, 3]`` (eV/Å^3, None without
        ``stresses``) from the members' energies ``[M]``, forces ``[M, N, 3]`` and stresses ``[M, 3, 3]``."""
        members, atoms = forces.shape[0], forces.shape[1]
        spread = energies - energies.mean()
        scale = atoms * self.width**2
        damping = np.exp(-np.mean(spread**2) / scale)
        energy = self.strength * (damping - 1.0)
        # dE_bias/ds2 = -A damping / scale; force = -dE_bias/dx, with dE_m/dx = -F_m.
        slope = -self.strength * damping / scale
        weights = 2.0 * spread / members
        bias_forces = slope * np.einsum("m,mij->ij", weights, forces)
        bias_stress = None if stresses is None else slope * np.einsum("m,mij->ij", weights, stresses)
        return float(energy), bias_forces, bias_stress
