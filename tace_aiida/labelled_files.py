"""Labelled structures from files written by other codes: energies, forces and stresses under any key."""

from __future__ import annotations

from ase import Atoms
from ase.calculators.singlepoint import SinglePointCalculator
from ase.io import read

from tace_aiida.model.data import read_label


def read_labelled(path: str, index: str = ":", energy_key: str = "energy", forces_key: str = "forces",
                  stress_key: str = "stress") -> list[Atoms]:
    """The frames ``index`` of ``path`` with their labels attached as calculator results (eV, eV/Å, eV/Å^3).

    Labels are read from ``atoms.info``/``atoms.arrays`` under the given keys, or from the results ASE's reader
    attached; every frame must have an energy and forces (``ValueError`` naming the file and the frame).
    """
    try:
        frames = read(path, index=index)
    except Exception as error:  # ASE raises many kinds of error on files it cannot parse
        raise ValueError(f"{path}: cannot read frames {index!r}: {type(error).__name__}: {error}") from error
    frames = frames if isinstance(frames, list) else [frames]
    if not frames:
        raise ValueError(f"{path}: index {index!r} selects no frame")
    return [_with_labels(atoms, f"{path}, frame {i}", energy_key, forces_key, stress_key) for i, atoms in enumerate(frames)]


def _with_labels(atoms: Atoms, name: str, energy_key: str, forces_key: str, stress_key: str) -> Atoms:
    """A copy of ``atoms`` whose labels are a calculator's results, the keys they came under removed."""
    try:
        energy = read_label(atoms, energy_key, per_atom=False)
        forces = read_label(atoms, forces_key, per_atom=True)
        stress = read_label(atoms, stress_key, per_atom=False)
    except ValueError as error:
        raise ValueError(f"{name}: {error}") from None
    missing = [key for key, value in ((energy_key, energy), (forces_key, forces)) if value is None]
    if missing:
        results = getattr(atoms.calc, "results", {}) if atoms.calc is not None else {}
        keys = sorted({*atoms.info, *atoms.arrays, *results} - {"numbers", "positions"})
        raise ValueError(f"{name} has no {' or '.join(repr(key) for key in missing)} label (its keys: {keys}); "
                         "name them with --energy-key / --forces-key")
    if energy.size != 1:
        raise ValueError(f"{name}: the {energy_key!r} label is {energy.tolist()}, not one number")
    copy = Atoms(atoms.numbers, atoms.positions, cell=atoms.cell, pbc=atoms.pbc)
    copy.info.update({key: value for key, value in atoms.info.items() if key not in (energy_key, stress_key)})
    for key, value in atoms.arrays.items():
        if key not in ("numbers", "positions", forces_key):
            copy.new_array(key, value)
    results = {"energy": float(energy), "forces": forces, **({"stress": stress} if stress is not None else {})}
    copy.calc = SinglePointCalculator(copy, **results)
    return copy
