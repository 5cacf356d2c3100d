"""A small real dataset whose energies depend on the conditions: charge, spin and an electric field.

Labelled with Kohn-Sham DFT (PBE/def2-SVP, PySCF), energies only (eV):

* O2 at bond lengths of 1.05-1.45 Å in four states: the neutral triplet (spin 3) and singlet (spin 1),
  the cation O2+ (charge +1, spin 2) and the anion O2- (charge -1, spin 2); the same geometries,
  so only ``info["charge"]`` and ``info["spin"]`` tell them apart;
* H2O, displaced, in a uniform field of up to ``--max-field`` V/Å in a random direction
  (``info["electric_field"]``); the energy includes the nuclei's energy in the field,
  ``-sum_A Z_A F.R_A``, so it does not depend on the origin for a neutral molecule.

Every structure is rotated at random. About 1 s per frame on one core.

    python -m benchmarks.pyscf_conditions_dataset --output tests/data/pyscf_conditions.xyz
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from ase import Atoms
from ase.build import molecule
from ase.calculators.singlepoint import SinglePointCalculator
from ase.io import write
from ase.units import Bohr, Hartree
from pyscf import dft, gto
from scipy.spatial.transform import Rotation

XC, BASIS = "pbe", "def2-svp"
#: (charge e, spin multiplicity) of the O2 states.
OXYGEN_STATES = ((0, 3), (0, 1), (1, 2), (-1, 2))
#: One atomic unit of electric field in V/Å.
FIELD_AU = Hartree / Bohr


def energy(atoms: Atoms, charge: int, multiplicity: int, field: np.ndarray) -> float:
    """Total energy (eV) of ``atoms`` with ``charge`` (e) and spin ``multiplicity`` in a uniform ``field`` (V/Å)."""
    mol = gto.M(atom=[(s, p) for s, p in zip(atoms.get_chemical_symbols(), atoms.positions, strict=True)],
                basis=BASIS, unit="Angstrom", charge=charge, spin=multiplicity - 1, verbose=0)
    solver = dft.RKS(mol) if multiplicity == 1 else dft.UKS(mol)
    solver.xc = XC
    solver.conv_tol = 1e-10
    field_au = field / FIELD_AU
    if np.any(field_au):
        hcore = solver.get_hcore()
        positions = mol.intor_symmetric("int1e_r", comp=3)
        # An electron (charge -1) in a uniform field F has potential energy +F.r (atomic units).
        solver.get_hcore = lambda *_: hcore + np.einsum("x,xij->ij", field_au, positions)
    solver = solver.newton()  # second-order SCF: the closed-shell singlet of O2 does not converge by DIIS
    electronic = solver.kernel()
    if not solver.converged:
        raise RuntimeError(f"SCF did not converge for {atoms.get_chemical_formula()} charge {charge} spin {multiplicity}")
    nuclear = -np.dot(mol.atom_charges(), mol.atom_coords() @ field_au)
    return (electronic + nuclear) * Hartree


def rotated(atoms: Atoms, rng: np.random.Generator) -> Atoms:
    atoms.positions = Rotation.random(random_state=rng.integers(2**31)).apply(atoms.positions - atoms.get_center_of_mass())
    return atoms


def labelled(atoms: Atoms, charge: int, multiplicity: int, field: np.ndarray) -> Atoms:
    atoms.calc = SinglePointCalculator(atoms, energy=energy(atoms, charge, multiplicity, field))
    atoms.info.update(charge=charge, spin=multiplicity)
    if np.any(field):
        atoms.info["electric_field"] = field
    return atoms


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--oxygen-geometries", type=int, default=20, help="O2 bond lengths (4 states each)")
    parser.add_argument("--water", type=int, default=60, help="H2O frames in fields")
    parser.add_argument("--max-field", type=float, default=0.5, help="largest field (V/Å)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", type=Path, default=Path("pyscf_conditions.xyz"))
    args = parser.parse_args()
    rng = np.random.default_rng(args.seed)
    frames = []
    for length in rng.uniform(1.05, 1.45, size=args.oxygen_geometries):
        geometry = rotated(Atoms("O2", positions=[[0, 0, 0], [0, 0, length]]), rng)
        frames += [labelled(geometry.copy(), charge, spin, np.zeros(3)) for charge, spin in OXYGEN_STATES]
        print(f"{len(frames)} frames", flush=True)
    for _ in range(args.water):
        water = molecule("H2O")
        water.positions += rng.normal(scale=0.05, size=water.positions.shape)
        direction = rng.normal(size=3)
        field = direction / np.linalg.norm(direction) * args.max_field * rng.uniform() ** (1 / 3)
        frames.append(labelled(rotated(water, rng), 0, 1, field))
        print(f"{len(frames)} frames", flush=True)
    write(args.output, frames, format="extxyz")


if __name__ == "__main__":
    main()
