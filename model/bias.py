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
        atoms = forces.shape[1]
        energy = self.strength * (self.damping(energies, atoms) - 1.0)
        bias_stress = None if stresses is None else self.share(energies, atoms, stresses)
        return float(energy), self.share(energies, atoms, forces), bias_stress

    def damping(self, energies: np.ndarray, atoms: int) -> float:
        """``exp(-s2 / (N B^2))`` of the members' energies ``[M]`` (eV) for ``atoms`` atoms: 1 where they agree."""
        return float(np.exp(-np.var(energies) / (atoms * self.width**2)))

    def share(self, energies: np.ndarray, atoms: int, members: np.ndarray) -> np.ndarray:
        """The bias's part of a quantity linear in the members' energy derivatives (forces ``[M, N, 3]``,
        stresses or virials ``[M, 3, 3]``), for the members' energies ``[M]`` (eV) of ``atoms`` atoms."""
        scale = atoms * self.width**2
        # dE_bias/ds2 = -A damping / scale; d s2/dx = (2/M) sum_m (E_m - <E>) dE_m/dx, member by member.
        slope = -self.strength * self.damping(energies, atoms) / scale
        weights = 2.0 * (energies - energies.mean()) / len(energies)
        return slope * np.einsum("m,m...->...", weights, members)
