"""A charged reference calculator for NaCl: rigid ions of charge +-1 e with Buckingham short-range terms.

The Coulomb energy and forces are pymatgen's Ewald sum (point charges, periodic cells), the
short-range Buckingham terms ``A exp(-r / rho) - C / r^6`` matscipy's pair potential (cut at 8 Å and
shifted). Parameters are Catlow's rigid-ion set for NaCl; the lattice constant that minimises the
energy is :data:`LATTICE_CONSTANT` (Å). Energies in eV, forces in eV/Å.
"""

from __future__ import annotations

import numpy as np
from ase import Atoms
from ase.calculators.calculator import Calculator, all_changes
from ase.calculators.mixing import SumCalculator
from matscipy.calculators.pair_potential import PairPotential
from matscipy.calculators.pair_potential.calculator import BeestKramerSanten
from pymatgen.analysis.ewald import EwaldSummation
from pymatgen.io.ase import AseAtomsAdaptor

#: (Z1, Z2) -> (A eV, rho Å, C eV Å^6).
BUCKINGHAM = {(11, 17): (1170.0, 0.321, 0.0), (17, 17): (1227.2, 0.3214, 29.06), (11, 11): (7895.4, 0.1709, 0.0)}
CHARGES = {11: 1.0, 17: -1.0}
PAIR_CUTOFF = 8.0
#: Conventional cubic lattice constant (Å) at the energy minimum of this model.
LATTICE_CONSTANT = 5.70


class PointChargeEwald(Calculator):
    """Coulomb energy (eV) and forces (eV/Å) of formal charges in a periodic cell, by pymatgen's Ewald sum."""

    implemented_properties = ["energy", "free_energy", "forces"]

    def calculate(self, atoms: Atoms | None = None, properties=None, system_changes=all_changes) -> None:
        super().calculate(atoms, properties, system_changes)
        structure = AseAtomsAdaptor.get_structure(self.atoms)
        structure.add_oxidation_state_by_site([CHARGES[int(z)] for z in self.atoms.numbers])
        ewald = EwaldSummation(structure, acc_factor=10.0, compute_forces=True)
        self.results = {"energy": ewald.total_energy, "free_energy": ewald.total_energy, "forces": np.array(ewald.forces)}


def rigid_ion_calculator() -> SumCalculator:
    """Ewald Coulomb plus Buckingham repulsion/dispersion for Na+ and Cl-."""
    pairs = {key: BeestKramerSanten(a, 1.0 / rho, c, PAIR_CUTOFF) for key, (a, rho, c) in BUCKINGHAM.items()}
    return SumCalculator([PointChargeEwald(), PairPotential(pairs)])
