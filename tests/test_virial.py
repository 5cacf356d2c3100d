"""The calculator's ``virial`` (eV): ``-dE/d(strain)`` for periodic cells, slabs and molecules alike.

Checked against quantities computed without it: ``sum_i r_i (x) F_i`` for a molecule, ``-stress * volume`` for a
periodic cell, and finite differences of the energy under strain for a slab (float64).
"""

from __future__ import annotations

import numpy as np
import pytest
from ase import Atoms
from ase.build import fcc111
from ase.stress import voigt_6_to_full_3x3_stress
from tace_aiida.model.bias import UncertaintyBias
from tace_aiida.model.calculator import TACECalculator

from .conftest import periodic_cell

MOLECULE = Atoms("CCONH", positions=[[0, 0, 0], [1.45, 0.1, 0], [2.2, 1.1, 0.2], [-0.7, 1.2, 0.1], [-0.5, -0.9, 0.3]])


def virial_of(atoms: Atoms, calculator: TACECalculator) -> np.ndarray:
    """The 3x3 virial (eV) of ``atoms``."""
    return voigt_6_to_full_3x3_stress(calculator.get_property("virial", atoms))


def slab() -> Atoms:
    """A rattled two-species slab, periodic in x and y only, 8 Å of vacuum on each side."""
    atoms = fcc111("C", size=(2, 2, 3), a=3.6, vacuum=8.0, periodic=False)
    atoms.pbc = [True, True, False]
    atoms.symbols[::3] = "O"
    atoms.rattle(0.1, seed=3)
    return atoms


def strained_energy(atoms: Atoms, calculator: TACECalculator, strain: np.ndarray) -> float:
    """Energy (eV) of ``atoms`` with positions and cell deformed by ``1 + strain``."""
    deformed = atoms.copy()
    deformed.set_cell(atoms.cell[:] @ (np.eye(3) + strain), scale_atoms=True)
    deformed.calc = calculator
    return deformed.get_potential_energy()


def test_molecule_virial_is_the_sum_of_positions_times_forces(ensemble_checkpoints):
    atoms = MOLECULE.copy()
    calculator = TACECalculator(ensemble_checkpoints, device="cpu")
    virial = virial_of(atoms, calculator)
    forces = calculator.get_forces(atoms)
    expected = np.einsum("ia,ib->ab", atoms.positions, forces)
    assert np.abs(expected).max() > 0.1
    assert np.abs(virial - expected).max() < 1e-10


def test_periodic_virial_is_minus_stress_times_volume(ensemble_checkpoints):
    atoms = periodic_cell(seed=4)
    calculator = TACECalculator(ensemble_checkpoints, device="cpu")
    virial = calculator.get_property("virial", atoms)
    stress = calculator.get_stress(atoms)
    assert np.abs(stress).max() > 1e-3
    assert np.abs(virial + stress * atoms.get_volume()).max() < 1e-10


def test_slab_virial_is_the_strain_derivative_of_the_energy(ensemble_checkpoints):
    atoms = slab()
    calculator = TACECalculator(ensemble_checkpoints[0], device="cpu")
    virial = virial_of(atoms, calculator)
    step = 1e-5
    for a, b in [(0, 0), (1, 1), (2, 2), (0, 1), (0, 2)]:
        strain = np.zeros((3, 3))
        strain[a, b] = strain[b, a] = step
        derivative = (strained_energy(atoms, calculator, strain) - strained_energy(atoms, calculator, -strain)) / (2 * step)
        # both off-diagonal entries moved: the derivative is twice the symmetric strain's
        assert derivative == pytest.approx(-virial[a, b] * (1 if a == b else 2), abs=1e-6)
    assert np.abs(virial).max() > 0.1


def test_biased_virial_matches_the_biased_forces(ensemble_checkpoints):
    """The bias's virial is the same weighted sum of the members' as its forces: for a molecule,
    ``sum_i r_i (x) F_i`` of the biased forces."""
    atoms = MOLECULE.copy()
    probe = TACECalculator(ensemble_checkpoints, device="cpu")
    probe.get_potential_energy(atoms)
    width = probe.results["energy_std"] / np.sqrt(len(atoms))  # the bias's steep part
    calculator = TACECalculator(ensemble_checkpoints, device="cpu", bias=UncertaintyBias(2.0, width))
    virial = virial_of(atoms, calculator)
    forces = calculator.get_forces(atoms)
    assert np.abs(forces - calculator.results["unbiased_forces"]).max() > 1e-3
    assert np.abs(virial - np.einsum("ia,ib->ab", atoms.positions, forces)).max() < 1e-10
