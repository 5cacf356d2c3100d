"""A small real dataset of molecules in uniform electric fields: PySCF energies, forces, dipoles and their
field derivatives.

H2O and NH3 are displaced (each atom by a Gaussian of ``--displacement`` Å), rotated at random and
put in a uniform field of random direction and a magnitude up to ``--max-field`` V/Å (uniform in the
ball), then labelled with Kohn-Sham DFT (PBE/def2-SVP) by
:class:`~tace_aiida.labelling.pyscf_calculator.PySCFCalculator`: ``energy`` (eV, the molecule in the
field), ``forces`` (eV/Å, the exact gradient in the field), ``dipole`` (e Å, the polarised molecule's),
``info["polarizability"]`` (Å^3, 9 values) and ``arrays["born_effective_charges"]`` (e, 9 values per atom,
``Z_A[j, k] = dF_Ak / dE_j`` row-major), both by central differences in fields of +-10^-3 au about
the frame's, and ``info["electric_field"]`` (V/Å).

    python -m benchmarks.pyscf_field_dataset --per-molecule 50 --output tests/data/pyscf_field.xyz

About 20 s per frame on one core (seven SCF runs).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from ase import Atoms
from ase.build import molecule
from ase.calculators.singlepoint import SinglePointCalculator
from ase.io import write
from scipy.spatial.transform import Rotation

from tace_aiida.labelling.pyscf_calculator import PySCFCalculator

MOLECULES = ("H2O", "NH3")
SETTINGS = {"xc": "PBE", "basis": "def2-SVP", "conv_tol": 1e-10}


def in_field(name: str, rng: np.random.Generator, displacement: float, max_field: float) -> Atoms:
    """``name`` displaced, rotated about its centre of mass and labelled in a random field."""
    atoms = molecule(name)
    atoms.positions += rng.normal(scale=displacement, size=atoms.positions.shape)
    atoms.positions = Rotation.random(random_state=rng.integers(2**31)).apply(atoms.positions - atoms.get_center_of_mass())
    direction = rng.normal(size=3)
    field = direction / np.linalg.norm(direction) * max_field * rng.uniform() ** (1 / 3)
    atoms.calc = PySCFCalculator(**SETTINGS, electric_field=field)
    results = {"energy": atoms.get_potential_energy(), "forces": atoms.get_forces(), "dipole": atoms.get_dipole_moment()}
    polarizability = atoms.calc.get_property("polarizability", atoms)
    born_charges = atoms.calc.get_property("born_effective_charges", atoms)
    atoms.calc = SinglePointCalculator(atoms, **results)
    atoms.info["electric_field"] = field
    atoms.info["polarizability"] = polarizability.reshape(9)
    atoms.arrays["born_effective_charges"] = born_charges.reshape(len(atoms), 9)
    return atoms


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--per-molecule", type=int, default=50)
    parser.add_argument("--displacement", type=float, default=0.05, help="Å")
    parser.add_argument("--max-field", type=float, default=0.5, help="V/Å")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", type=Path, default=Path("tests/data/pyscf_field.xyz"))
    args = parser.parse_args()
    rng = np.random.default_rng(args.seed)
    frames = []
    for _ in range(args.per_molecule):
        for name in MOLECULES:
            frames.append(in_field(name, rng, args.displacement, args.max_field))
        print(f"{len(frames)} frames", flush=True)
    write(args.output, frames, format="extxyz")


if __name__ == "__main__":
    main()
