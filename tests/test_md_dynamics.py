"""The exploration MD's integrators (:func:`tace_aiida.model.md.make_dynamics`), run with ASE's EMT."""

from __future__ import annotations

import warnings

import numpy as np
from ase import Atoms
from ase.build import bulk
from ase.calculators.emt import EMT
from ase.constraints import FixAtoms, FixCom
from ase.md.velocitydistribution import Stationary, thermalize_momenta
from tace_aiida.model import md


def hot_copper() -> Atoms:
    """An 8-atom Cu cell with 600 K velocities and EMT forces."""
    atoms = bulk("Cu", "fcc", a=3.6, cubic=True).repeat((2, 1, 1))
    atoms.calc = EMT()
    thermalize_momenta(atoms, temperature_K=600, rng=np.random.default_rng(0))
    return atoms


def test_langevin_holds_the_centre_of_mass_without_the_deprecated_fixcm():
    atoms = hot_copper()
    Stationary(atoms)
    start = atoms.get_center_of_mass()
    dynamics = md.make_dynamics(atoms, md.MDSettings(temperature=600, timestep=2.0, friction=0.02))
    assert any(isinstance(constraint, FixCom) for constraint in atoms.constraints)
    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)
        dynamics.run(100)
    assert np.abs(atoms.get_center_of_mass() - start).max() < 1e-10
    assert np.abs(atoms.get_momenta().sum(axis=0)).max() < 1e-10
    assert atoms.get_temperature() > 0


def test_langevin_keeps_the_structures_own_constraints():
    atoms = hot_copper()
    atoms.set_constraint(FixAtoms(indices=[0]))
    pinned = atoms.positions[0].copy()
    md.make_dynamics(atoms, md.MDSettings(temperature=600, timestep=2.0)).run(20)
    assert [type(constraint) for constraint in atoms.constraints] == [FixAtoms]
    assert np.array_equal(atoms.positions[0], pinned)
