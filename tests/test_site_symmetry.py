"""Forces a crystal's symmetry forbids (:mod:`tace_aiida.site_symmetry`), checked against EMT's forces."""

from __future__ import annotations

import numpy as np
import pytest
from ase import Atoms
from ase.build import bulk, molecule
from ase.calculators.emt import EMT

from tace_aiida.site_symmetry import force_directions, forces_vanish_by_symmetry


@pytest.mark.parametrize("atoms", [
    bulk("Cu", "fcc", a=3.61),
    bulk("Cu", "fcc", a=3.61, cubic=True).repeat(2),
    bulk("Cu", "hcp", a=2.55, c=4.16),
    bulk("Si", "diamond", a=5.43),
    bulk("NaCl", "rocksalt", a=5.64),
    bulk("Cu", "fcc", a=3.61, cubic=True).repeat((2, 1, 1)),
], ids=["fcc", "fcc-2x2x2", "hcp", "diamond", "rocksalt", "fcc-strained-2x1x1"])
def test_ideal_crystals_have_no_force_direction(atoms):
    assert force_directions(atoms) == [0] * len(atoms)
    assert forces_vanish_by_symmetry(atoms)


def test_polar_sites_keep_the_polar_axis():
    wurtzite = bulk("ZnO", "wurtzite", a=3.25, c=5.21)
    assert force_directions(wurtzite) == [1] * 4
    assert not forces_vanish_by_symmetry(wurtzite)


def test_emt_forces_vanish_where_symmetry_says_and_lie_along_the_free_direction():
    atoms = bulk("Cu", "fcc", a=3.61, cubic=True).repeat(3)
    del atoms[0]  # the vacancy is at the origin
    directions = force_directions(atoms)
    assert set(directions) == {0, 1, 2}, "sites on an axis through the vacancy keep it, on a mirror plane two"
    atoms.calc = EMT()
    forces = atoms.get_forces()
    magnitudes = np.linalg.norm(forces, axis=1)
    fixed = np.array(directions) == 0
    assert magnitudes[fixed].max() < 1e-10
    offsets = atoms.positions - atoms.cell.cartesian_positions(np.round(atoms.cell.scaled_positions(atoms.positions)))
    shell = np.flatnonzero(np.linalg.norm(offsets, axis=1) < 3.0)
    assert len(shell) == 12 and not fixed[shell].any()
    cosines = np.abs(np.einsum("ni,ni->n", forces[shell], offsets[shell])) / (
        magnitudes[shell] * np.linalg.norm(offsets[shell], axis=1))
    assert cosines == pytest.approx(1.0, abs=1e-8), "the vacancy's neighbours are pushed along the line to it"


def test_rattled_cells_are_free_and_molecules_are_not_analysed():
    atoms = bulk("Cu", "fcc", a=3.61, cubic=True).repeat(2)
    atoms.rattle(0.01, seed=1)
    assert not forces_vanish_by_symmetry(atoms)
    water = molecule("H2O")
    assert not forces_vanish_by_symmetry(water)
    with pytest.raises(ValueError, match=r"H2O: the site symmetry of forces needs a cell periodic in three directions"):
        force_directions(water)
    slab = Atoms("Cu2", positions=[[0, 0, 0], [1.8, 1.8, 0]], cell=[3.6, 3.6, 10], pbc=[True, True, False])
    assert not forces_vanish_by_symmetry(slab)
    overlapping = Atoms("Cu2", positions=[[0, 0, 0], [0, 0, 0]], cell=[3, 3, 3], pbc=True)
    assert not forces_vanish_by_symmetry(overlapping), "no symmetry found, nothing claimed (the labeller names it)"
