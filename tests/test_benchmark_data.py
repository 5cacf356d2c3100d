"""The side-by-side benchmark's loader for any dataset in 3BPA's layout (``benchmarks/common.py``)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from ase import Atoms
from ase.calculators.singlepoint import SinglePointCalculator
from ase.io import read, write
from ase.neighborlist import neighbor_list

from benchmarks.common import frame_key, load_split_from_files, periodic_test_cell

DATA = Path(__file__).resolve().parent / "data"
TRAIN, TEST, ISOLATED = DATA / "3bpa_300K_40.xyz", DATA / "3bpa_1200K_12.xyz", DATA / "3bpa_iso_atoms.xyz"


def isolated_atoms_file(path: Path, energies: dict[str, float]) -> Path:
    """An extxyz of one isolated atom per element of ``energies`` (eV)."""
    atoms = []
    for symbol, energy in energies.items():
        atom = Atoms(symbol)
        atom.calc = SinglePointCalculator(atom, energy=energy)
        atoms.append(atom)
    write(path, atoms, format="extxyz")
    return path


def test_the_training_frames_are_the_same_draw_for_every_seed_and_the_validation_split_is_not():
    splits = {seed: load_split_from_files(TRAIN, [TEST], ISOLATED, seed=seed, train_frames=20) for seed in (1, 2)}
    used = {seed: {frame_key(a) for a in train + valid} for seed, (train, valid, _, _) in splits.items()}
    assert len(used[1]) == 20 and used[1] == used[2]
    assert {len(valid) for _, valid, _, _ in splits.values()} == {2}
    assert {frame_key(a) for a in splits[1][1]} != {frame_key(a) for a in splits[2][1]}
    _, _, test, e0s = splits[1]
    assert list(test) == ["3bpa_1200K_12"] and len(test["3bpa_1200K_12"]) == 12
    expected = {int(a.numbers[0]): a.get_potential_energy() for a in read(ISOLATED, ":")}
    assert e0s == expected


def test_isolated_atoms_of_absent_elements_are_left_out(tmp_path):
    energies = {"H": -13.6, "C": -1029.5, "N": -1485.0, "O": -2042.6, "Cl": -12500.0}
    _, _, _, e0s = load_split_from_files(TRAIN, [TEST], isolated_atoms_file(tmp_path / "iso.xyz", energies))
    assert sorted(e0s) == [1, 6, 7, 8]


def test_a_missing_isolated_atom_is_named(tmp_path):
    iso = isolated_atoms_file(tmp_path / "iso.xyz", {"H": -13.6, "C": -1029.5, "O": -2042.6})
    with pytest.raises(ValueError, match=r"no isolated atom of element\(s\) \[7\]"):
        load_split_from_files(TRAIN, [TEST], iso)


def test_more_training_frames_than_the_file_holds_is_an_error():
    with pytest.raises(ValueError, match="train_frames=41, but .* holds 40 frames"):
        load_split_from_files(TRAIN, [TEST], ISOLATED, train_frames=41)


def test_the_periodic_cell_of_other_molecules_keeps_them_apart():
    molecules = read(TRAIN, ":8")
    cell = periodic_test_cell(molecules, gap=3.0)
    assert len(cell) == 8 * len(molecules[0]) and cell.pbc.all()
    first, second = neighbor_list("ij", cell, 3.0)
    molecule_of = np.repeat(np.arange(8), len(molecules[0]))
    assert not np.any(molecule_of[first] != molecule_of[second])
    with pytest.raises(ValueError, match="needs as many frames, got 7"):
        periodic_test_cell(molecules[:7])
