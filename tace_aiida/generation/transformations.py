"""Each transformation as a function ``(atoms, settings, rng) -> variants``, a thin wrapper over pymatgen or ASE.

Structures travel as ASE ``Atoms`` (periodic cells and molecules alike) and are converted to pymatgen
``Structure`` where pymatgen does the work. Random choices draw from the seeded ``numpy.random.Generator``
passed in, so a chain run with the same seed makes the same variants.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from ase import Atoms
from pymatgen.analysis.elasticity.strain import Strain as PymatgenStrain
from pymatgen.core import Structure
from pymatgen.core.surface import SlabGenerator
from pymatgen.io.ase import AseAtomsAdaptor

from .settings import Box, Rattle, Strain, Substitution, Supercell, Surface, Transformation, Vacancy

SHEAR_VOIGT = {"yz": 3, "xz": 4, "xy": 5}


def to_structure(atoms: Atoms, step: str) -> Structure:
    """``atoms`` as a pymatgen Structure; ``step`` names the transformation that needs a periodic cell."""
    if not atoms.pbc.all():
        raise ValueError(f"{step} needs a structure periodic in all three directions, not {atoms.get_chemical_formula()} "
                         f"with pbc {atoms.pbc.tolist()}")
    return AseAtomsAdaptor.get_structure(atoms)


def plain(atoms: Atoms) -> Atoms:
    """Only the numbers, positions, cell and pbc of ``atoms`` (no masses, tags or site properties)."""
    return Atoms(numbers=atoms.numbers, positions=atoms.positions, cell=atoms.cell, pbc=atoms.pbc)


def to_atoms(structure: Structure) -> Atoms:
    return plain(AseAtomsAdaptor.get_atoms(structure))


def supercell(atoms: Atoms, settings: Supercell, rng: np.random.Generator) -> list[Atoms]:
    """One supercell (pymatgen ``make_supercell``)."""
    return [to_atoms(to_structure(atoms, "supercell").make_supercell(settings.matrix, in_place=False))]


def strain(atoms: Atoms, settings: Strain, rng: np.random.Generator) -> list[Atoms]:
    """One cell per volumetric strain (pymatgen ``apply_strain``), three per shear strain (yz, xz, xy),
    atoms moved with the cell."""
    structure = to_structure(atoms, "strain")
    variants = [to_atoms(structure.apply_strain(value, inplace=False)) for value in settings.volumetric]
    for value in settings.shear:
        for index in SHEAR_VOIGT.values():
            voigt = np.zeros(6)
            voigt[index] = value
            deformation = PymatgenStrain.from_voigt(voigt).get_deformation_matrix()
            variants.append(to_atoms(deformation.apply_to_structure(structure)))
    return variants


def rattle(atoms: Atoms, settings: Rattle, rng: np.random.Generator) -> list[Atoms]:
    """``copies`` copies per amplitude with Gaussian displacements of that standard deviation (ASE ``rattle``)."""
    variants = []
    for amplitude in settings.amplitudes:
        for _ in range(settings.copies):
            moved = plain(atoms)
            moved.rattle(stdev=amplitude, rng=rng)
            variants.append(moved)
    return variants


def _sites(atoms: Atoms, species: str | None) -> np.ndarray:
    symbols = np.array(atoms.get_chemical_symbols())
    return np.arange(len(atoms)) if species is None else np.flatnonzero(symbols == species)


def vacancy(atoms: Atoms, settings: Vacancy, rng: np.random.Generator) -> list[Atoms]:
    """``variants`` copies with ``count`` random sites removed (pymatgen ``remove_sites``); none when too few sites."""
    sites = _sites(atoms, settings.species)
    if len(sites) < settings.count or len(atoms) <= settings.count:
        return []
    structure = to_structure(atoms, "vacancy") if atoms.pbc.all() else AseAtomsAdaptor.get_molecule(atoms)
    variants = []
    for _ in range(settings.variants):
        removed = structure.copy()
        removed.remove_sites(sorted(rng.choice(sites, size=settings.count, replace=False).tolist()))
        variants.append(_back(removed, atoms))
    return variants


def substitution(atoms: Atoms, settings: Substitution, rng: np.random.Generator) -> list[Atoms]:
    """Per fraction, ``variants`` copies with round(fraction × n) random ``replace`` sites made ``by``
    (pymatgen ``Structure.replace`` on the chosen sites); none when ``atoms`` has no ``replace`` site."""
    sites = _sites(atoms, settings.replace)
    if not len(sites):
        return []
    structure = to_structure(atoms, "substitution") if atoms.pbc.all() else AseAtomsAdaptor.get_molecule(atoms)
    variants = []
    for fraction in settings.fractions:
        count = int(round(fraction * len(sites)))
        for _ in range(settings.variants):
            alloy = structure.copy()
            for index in rng.choice(sites, size=count, replace=False).tolist():
                alloy.replace(index, settings.by)
            variants.append(_back(alloy, atoms))
    return variants


def surface(atoms: Atoms, settings: Surface, rng: np.random.Generator) -> list[Atoms]:
    """Every termination of a slab per Miller index (pymatgen ``SlabGenerator.get_slabs``)."""
    structure = to_structure(atoms, "surface")
    variants = []
    for miller in settings.miller_indices:
        generator = SlabGenerator(structure, tuple(miller), settings.min_slab_size, settings.min_vacuum_size,
                                  center_slab=True)
        variants += [to_atoms(slab.get_orthogonal_c_slab()) for slab in generator.get_slabs()]
    return variants


def box(atoms: Atoms, settings: Box, rng: np.random.Generator) -> list[Atoms]:
    """A molecule centred in a box with ``vacuum`` Å around it (ASE ``Atoms.center``)."""
    if atoms.pbc.any():
        raise ValueError(f"box places molecules in boxes; {atoms.get_chemical_formula()} is periodic "
                         f"(pbc {atoms.pbc.tolist()})")
    boxed = plain(atoms)
    boxed.center(vacuum=settings.vacuum)
    boxed.pbc = settings.periodic
    return [boxed]


def _back(changed, original: Atoms) -> Atoms:
    """A pymatgen Structure or Molecule made from ``original`` as Atoms with ``original``'s cell and pbc."""
    if isinstance(changed, Structure):
        return to_atoms(changed)
    atoms = plain(AseAtomsAdaptor.get_atoms(changed))
    atoms.cell, atoms.pbc = original.cell, original.pbc
    return atoms


APPLY: dict[str, Callable[[Atoms, Transformation, np.random.Generator], list[Atoms]]] = {
    "supercell": supercell, "strain": strain, "rattle": rattle, "vacancy": vacancy,
    "substitution": substitution, "surface": surface, "box": box,
}


def apply(atoms: Atoms, transformation: Transformation, rng: np.random.Generator) -> list[Atoms]:
    """The variants of ``atoms`` made by ``transformation`` (and ``atoms`` itself first with ``keep_parents``)."""
    variants = APPLY[transformation.type](atoms, transformation, rng)
    return [plain(atoms), *variants] if transformation.keep_parents else variants
