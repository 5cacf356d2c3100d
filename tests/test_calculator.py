"""The ASE calculator: single model, ensemble uncertainty, stress, errors, and NVE molecular dynamics."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from ase import Atoms, units
from ase.calculators.calculator import PropertyNotImplementedError
from ase.md.velocitydistribution import Stationary, ZeroRotation, thermalize_momenta
from ase.md.verlet import VelocityVerlet
from tace_aiida.model.calculator import TACECalculator
from tace_aiida.model.checkpoint import load_model, save_checkpoint

from .conftest import periodic_cell

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def second_member(trained, tmp_path_factory) -> str:
    """A second ensemble member: the trained model with perturbed readout weights."""
    model, metadata = load_model(trained["checkpoint"])
    torch.manual_seed(11)
    with torch.no_grad():
        for parameter in model.readouts.parameters():
            parameter.add_(0.05 * torch.randn_like(parameter))
    return str(save_checkpoint(tmp_path_factory.mktemp("member") / "member.pt", model, metadata))


def test_single_model_has_zero_deviation(trained, frames_300K):
    atoms = frames_300K[9].copy()
    atoms.calc = TACECalculator(trained["checkpoint"], device="cpu")
    forces = atoms.get_forces()
    assert forces.shape == (27, 3) and np.abs(forces).max() > 0.05
    assert atoms.calc.results["max_force_std"] == 0.0
    assert atoms.calc.results["energy_std"] == 0.0
    assert atoms.get_potential_energies().sum() == pytest.approx(atoms.get_potential_energy(), abs=1e-8)
    assert atoms.calc.results["descriptors"].shape == (32,)
    with pytest.raises(PropertyNotImplementedError):
        atoms.get_stress()


def test_ensemble_mean_and_deviation(trained, second_member, frames_300K):
    atoms = frames_300K[11].copy()
    members = []
    for path in (trained["checkpoint"], second_member):
        atoms.calc = TACECalculator(path)
        members.append((atoms.get_potential_energy(), atoms.get_forces()))
    atoms.calc = TACECalculator([trained["checkpoint"], second_member])
    energy = atoms.get_potential_energy()
    forces = atoms.get_forces()
    assert energy == pytest.approx((members[0][0] + members[1][0]) / 2, abs=1e-9)
    assert np.allclose(forces, (members[0][1] + members[1][1]) / 2, atol=1e-10)
    half_difference = np.linalg.norm(members[0][1] - members[1][1], axis=1) / 2
    results = atoms.calc.results
    assert np.allclose(results["forces_std"], half_difference, atol=1e-10)
    assert results["max_force_std"] == pytest.approx(half_difference.max(), abs=1e-10)
    assert results["max_force_std"] > 0
    assert results["energy_std"] == pytest.approx(abs(members[0][0] - members[1][0]) / 2, abs=1e-9)
    assert results["energy_std_per_atom"] == pytest.approx(results["energy_std"] / 27)


def test_periodic_cell_has_stress(trained):
    atoms = periodic_cell(seed=3)
    atoms.calc = TACECalculator(trained["checkpoint"])
    stress = atoms.get_stress()
    assert stress.shape == (6,) and np.isfinite(stress).all()


def test_unknown_element_is_a_clear_error(trained):
    atoms = Atoms("CuO", positions=[[0, 0, 0], [1.8, 0, 0]])
    atoms.calc = TACECalculator(trained["checkpoint"])
    with pytest.raises(ValueError, match="contains Cu, which the model was not trained on"):
        atoms.get_potential_energy()


def test_nve_md_conserves_energy(trained, frames_300K):
    """1000 velocity-Verlet steps of 0.25 fs from 300 K: the total energy drifts by less than
    1 meV/atom (an energy/force inconsistency gives eV), and the molecule stays together."""
    atoms = frames_300K[0].copy()
    atoms.calc = TACECalculator(trained["checkpoint"])
    thermalize_momenta(atoms, temperature_K=300, rng=np.random.default_rng(0))
    Stationary(atoms)
    ZeroRotation(atoms)
    dynamics = VelocityVerlet(atoms, timestep=0.25 * units.fs)
    totals = []
    dynamics.attach(lambda: totals.append(atoms.get_total_energy()), interval=10)
    dynamics.run(1000)
    totals = np.array(totals)
    drift = np.abs(totals - totals[0]).max()
    assert len(totals) == 101
    assert atoms.get_temperature() < 2000, "the molecule flew apart: the test measures nothing"
    assert drift < 1e-3 * len(atoms), f"total energy drifted by {drift:.2e} eV over 1000 steps"
