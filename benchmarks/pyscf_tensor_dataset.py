"""A small real dataset with tensorial labels: PySCF energies, forces, dipoles and polarizabilities.

Molecules from ASE's G2 set (H2O, NH3, CH4, H2CO, CH3OH) are displaced (each atom by a Gaussian of
``--displacement`` Å) and rotated at random, then labelled with Kohn-Sham DFT (PBE/def2-SVP):

* ``energy`` (eV) and ``forces`` (eV/Å) without a field;
* ``dipole`` (e Å, about the origin; the molecules are neutral, so it does not depend on the origin);
* ``polarizability`` (Å^3, the polarizability volume alpha / (4 pi eps0)) by central finite differences
  of the dipole in uniform fields of +-``--field`` atomic units along x, y and z, symmetrised.

    python -m benchmarks.pyscf_tensor_dataset --per-molecule 20 --output tests/data/pyscf_tensors.xyz

About 3 s per frame on one core. The rotation makes the tensor labels span all orientations.
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

MOLECULES = ("H2O", "NH3", "CH4", "H2CO", "CH3OH")
XC, BASIS = "pbe", "def2-svp"


def kohn_sham(atoms: Atoms) -> dft.rks.RKS:
    mol = gto.M(atom=[(s, p) for s, p in zip(atoms.get_chemical_symbols(), atoms.positions, strict=True)],
                basis=BASIS, unit="Angstrom", verbose=0)
    solver = dft.RKS(mol)
    solver.xc = XC
    solver.conv_tol = 1e-11
    return solver


def label(atoms: Atoms, field: float) -> Atoms:
    """``atoms`` with energy, forces, dipole and polarizability from PBE/def2-SVP."""
    solver = kohn_sham(atoms)
    energy = solver.kernel()
    forces = -solver.nuc_grad_method().kernel() * Hartree / Bohr
    dipole = solver.dip_moment(unit="AU", verbose=0) * Bohr
    hcore = solver.get_hcore()
    position_integrals = solver.mol.intor_symmetric("int1e_r", comp=3)
    density = solver.make_rdm1()
    columns = []
    for axis in range(3):
        dipoles = []
        for sign in (1.0, -1.0):
            vector = np.zeros(3)
            vector[axis] = sign * field
            in_field = kohn_sham(atoms)
            # An electron (charge -1) in a uniform field F has potential energy +F.r (atomic units).
            in_field.get_hcore = lambda *_, v=vector: hcore + np.einsum("x,xij->ij", v, position_integrals)
            in_field.kernel(dm0=density)
            dipoles.append(in_field.dip_moment(unit="AU", verbose=0))
        columns.append((dipoles[0] - dipoles[1]) / (2 * field))
    polarizability = np.array(columns).T
    polarizability = 0.5 * (polarizability + polarizability.T) * Bohr**3
    labelled = atoms.copy()
    labelled.calc = SinglePointCalculator(labelled, energy=energy * Hartree, forces=forces)
    labelled.info["dipole"] = dipole
    labelled.info["polarizability"] = polarizability.reshape(-1)
    return labelled


def displaced(name: str, rng: np.random.Generator, displacement: float) -> Atoms:
    atoms = molecule(name)
    atoms.positions += rng.normal(scale=displacement, size=atoms.positions.shape)
    atoms.positions = Rotation.random(random_state=rng.integers(2**31)).apply(atoms.positions - atoms.get_center_of_mass())
    return atoms


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--per-molecule", type=int, default=30)
    parser.add_argument("--displacement", type=float, default=0.05, help="Gaussian displacement per atom (Å)")
    parser.add_argument("--field", type=float, default=1e-3, help="finite field (atomic units)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", type=Path, default=Path("pyscf_tensors.xyz"))
    args = parser.parse_args()
    rng = np.random.default_rng(args.seed)
    frames = []
    for _ in range(args.per_molecule):
        for name in MOLECULES:
            frames.append(label(displaced(name, rng, args.displacement), args.field))
            print(f"{len(frames)} frames", flush=True)
    write(args.output, frames, format="extxyz")


if __name__ == "__main__":
    main()
