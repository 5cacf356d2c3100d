"""Uncertainty-driven MD: the bias's forces and stress are the derivatives of its energy (finite differences)."""

from __future__ import annotations

import numpy as np
import pytest
from ase import Atoms
from tace_aiida.model import md
from tace_aiida.model.bias import UncertaintyBias
from tace_aiida.model.calculator import TACECalculator

from .conftest import periodic_cell

MOLECULE = Atoms("CCONH", positions=[[0, 0, 0], [1.45, 0.1, 0], [2.2, 1.1, 0.2], [-0.7, 1.2, 0.1], [-0.5, -0.9, 0.3]])


def biased(checkpoints: list[str], strength: float = 2.0, width: float = 0.05) -> TACECalculator:
    return TACECalculator(checkpoints, device="cpu", bias=UncertaintyBias(strength, width))


def steepest_width(checkpoints: list[str], atoms: Atoms) -> float:
    """The width (eV per sqrt(atom)) at which the bias of ``atoms`` is in its steep part, s2 = N B^2."""
    probe = atoms.copy()
    probe.calc = TACECalculator(checkpoints, device="cpu")
    probe.get_potential_energy()
    return probe.calc.results["energy_std"] / np.sqrt(len(atoms))


def test_the_bias_energy_is_bounded_and_adds_to_the_ensemble_mean(ensemble_checkpoints):
    atoms = MOLECULE.copy()
    plain = TACECalculator(ensemble_checkpoints, device="cpu")
    atoms.calc = plain
    mean_energy, spread = atoms.get_potential_energy(), plain.results["energy_std"]
    atoms.calc = biased(ensemble_checkpoints)
    energy = atoms.get_potential_energy()
    expected = 2.0 * (np.exp(-spread**2 / (len(atoms) * 0.05**2)) - 1.0)
    assert atoms.calc.results["bias_energy"] == pytest.approx(expected, rel=1e-10)
    assert -2.0 <= expected < 0.0
    assert energy == pytest.approx(mean_energy + expected, rel=1e-12)
    assert atoms.calc.results["unbiased_forces"] == pytest.approx(plain.results["forces"], rel=1e-12)


def test_biased_forces_are_minus_the_gradient_of_the_biased_energy(ensemble_checkpoints):
    """Both the model and the bias parts: central differences of 1e-5 Å in float64."""
    atoms = MOLECULE.copy()
    atoms.calc = biased(ensemble_checkpoints, width=steepest_width(ensemble_checkpoints, atoms))
    forces = atoms.get_forces()
    assert np.abs(atoms.calc.results["forces"] - atoms.calc.results["unbiased_forces"]).max() > 1e-3, \
        "the bias must be strong enough here for the check to mean something"
    step, numeric = 1e-5, np.zeros_like(forces)
    for atom in range(len(atoms)):
        for axis in range(3):
            energies = []
            for sign in (1, -1):
                displaced = atoms.copy()
                displaced.positions[atom, axis] += sign * step
                displaced.calc = atoms.calc
                energies.append(displaced.get_potential_energy())
            numeric[atom, axis] = -(energies[0] - energies[1]) / (2 * step)
    assert np.abs(forces - numeric).max() < 1e-6 * max(1.0, np.abs(forces).max())


def test_biased_stress_is_the_strain_derivative_of_the_biased_energy(ensemble_checkpoints):
    atoms = periodic_cell(seed=5, n_atoms=8)
    atoms.calc = biased(ensemble_checkpoints, width=steepest_width(ensemble_checkpoints, atoms))
    stress = atoms.get_stress(voigt=False)
    assert atoms.calc.results["bias_energy"] < -1e-4
    step, volume, numeric = 1e-6, atoms.get_volume(), np.zeros((3, 3))
    for i in range(3):
        for j in range(3):
            energies = []
            for sign in (1, -1):
                strain = np.eye(3)
                strain[i, j] += sign * step
                strained = atoms.copy()
                strained.set_cell(atoms.cell[:] @ strain, scale_atoms=True)
                strained.calc = atoms.calc
                energies.append(strained.get_potential_energy())
            numeric[i, j] = (energies[0] - energies[1]) / (2 * step * volume)
    numeric = (numeric + numeric.T) / 2
    assert np.abs(stress - numeric).max() < 1e-6 * max(1.0, np.abs(stress).max())


def test_biased_md_records_the_ensembles_unbiased_predictions_and_moves_differently(ensemble_checkpoints):
    """Same seed, same start: the bias changes the path; every frame holds the members' mean forces."""
    width = steepest_width(ensemble_checkpoints, MOLECULE)
    trajectories = {}
    for strength in (0.0, 5.0):
        settings = md.MDSettings(checkpoints=ensemble_checkpoints, temperature=300.0, steps=6, save_interval=3,
                                 device="cpu", bias_strength=strength, bias_width=width)
        calculator = TACECalculator(ensemble_checkpoints, device="cpu", bias=settings.bias)
        trajectories[strength], summary = md.run_md(MOLECULE, settings, calculator)
        assert summary["stop_reason"] == "completed"
    plain, pulled = trajectories[0.0], trajectories[5.0]
    assert np.allclose(plain["positions"][0], pulled["positions"][0])
    assert np.abs(plain["positions"][-1] - pulled["positions"][-1]).max() > 1e-6
    unbiased = TACECalculator(ensemble_checkpoints, device="cpu")
    for positions, forces, energy in zip(pulled["positions"], pulled["forces"], pulled["energies"], strict=True):
        atoms = MOLECULE.copy()
        atoms.positions = positions
        atoms.calc = unbiased
        assert np.allclose(forces, atoms.get_forces(), rtol=0, atol=1e-10)
        assert energy == pytest.approx(atoms.get_potential_energy(), abs=1e-10)


@pytest.mark.parametrize(("strength", "width"), [(0.0, 0.1), (-1.0, 0.1), (1.0, 0.0), (1.0, float("nan"))])
def test_bad_bias_settings_name_the_value(strength, width):
    with pytest.raises(ValueError, match="uncertainty bias (strength|width) must be a finite number > 0"):
        UncertaintyBias(strength, width)


def test_a_bias_needs_an_ensemble(ensemble_checkpoints):
    with pytest.raises(ValueError, match="needs an ensemble of at least 2 checkpoints, not 1"):
        TACECalculator(ensemble_checkpoints[:1], bias=UncertaintyBias(1.0, 0.1))
