"""Labelled structures from files written by other codes: energies, forces and stresses under any key."""

from __future__ import annotations

import numpy as np
from ase import Atoms
from ase.calculators.singlepoint import SinglePointCalculator
from ase.io import read

from tace_aiida.model.data import read_label
from tace_aiida.model.frames import full_3x3_stress


def read_labelled(path: str, index: str = ":", energy_key: str = "energy", forces_key: str = "forces",
                  stress_key: str = "stress", virial_key: str = "virial") -> list[Atoms]:
    """The frames ``index`` of ``path`` with their labels attached as calculator results (eV, eV/Å, eV/Å^3).

    Labels are read from ``atoms.info``/``atoms.arrays`` under the given keys, or from the results ASE's reader
    attached; a frame without a stress but with a virial (eV, as libAtoms/GAP files hold it) gets the stress
    ``-virial / volume``. Every frame must have an energy and forces (``ValueError`` naming the file and the frame).
    """
    try:
        frames = read(path, index=index)
    except Exception as error:  # ASE raises many kinds of error on files it cannot parse
        raise ValueError(f"{path}: cannot read frames {index!r}: {type(error).__name__}: {error}") from error
    frames = frames if isinstance(frames, list) else [frames]
    if not frames:
        raise ValueError(f"{path}: index {index!r} selects no frame")
    keys = (energy_key, forces_key, stress_key, virial_key)
    return [_with_labels(atoms, f"{path}, frame {i}", *keys) for i, atoms in enumerate(frames)]


def _with_labels(atoms: Atoms, name: str, energy_key: str, forces_key: str, stress_key: str, virial_key: str) -> Atoms:
    """A copy of ``atoms`` whose labels are a calculator's results, the keys they came under removed."""
    try:
        energy = read_label(atoms, energy_key, per_atom=False)
        forces = read_label(atoms, forces_key, per_atom=True)
        stress = read_label(atoms, stress_key, per_atom=False)
        virial = read_label(atoms, virial_key, per_atom=False) if stress is None else None
    except ValueError as error:
        raise ValueError(f"{name}: {error}") from None
    if stress is not None:
        stress = _full_3x3(stress, name, stress_key)
    elif virial is not None:
        stress = -_full_3x3(virial, name, virial_key) / _volume(atoms, name, virial_key)
    missing = [key for key, value in ((energy_key, energy), (forces_key, forces)) if value is None]
    if missing:
        results = getattr(atoms.calc, "results", {}) if atoms.calc is not None else {}
        keys = sorted({*atoms.info, *atoms.arrays, *results} - {"numbers", "positions"})
        raise ValueError(f"{name} has no {' or '.join(repr(key) for key in missing)} label (its keys: {keys}); "
                         "name them with --energy-key / --forces-key")
    if energy.size != 1:
        raise ValueError(f"{name}: the {energy_key!r} label is {energy.tolist()}, not one number")
    copy = Atoms(atoms.numbers, atoms.positions, cell=atoms.cell, pbc=atoms.pbc)
    labels = (energy_key, stress_key, virial_key)
    copy.info.update({key: value for key, value in atoms.info.items() if key not in labels})
    for key, value in atoms.arrays.items():
        if key not in ("numbers", "positions", forces_key):
            copy.new_array(key, value)
    results = {"energy": float(energy), "forces": forces, **({"stress": stress} if stress is not None else {})}
    copy.calc = SinglePointCalculator(copy, **results)
    return copy


def _full_3x3(tensor, name: str, key: str) -> np.ndarray:
    """:func:`~tace_aiida.model.frames.full_3x3_stress` of the ``key`` label, its error naming the frame."""
    try:
        return full_3x3_stress(tensor)
    except ValueError as error:
        raise ValueError(f"{name}: the {key!r} label: {error}") from None


def _volume(atoms: Atoms, name: str, key: str) -> float:
    """The cell volume (Å^3) that turns a virial into a stress; refused for a structure without a 3D cell."""
    if not atoms.pbc.all() or atoms.cell.rank < 3:
        raise ValueError(f"{name}: a {key!r} label needs a periodic cell to become a stress")
    return atoms.get_volume()
