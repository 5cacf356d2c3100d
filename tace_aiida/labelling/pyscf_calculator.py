"""``PySCFCalculator``: an ASE calculator for molecules with PySCF's Kohn-Sham DFT (energy, analytic forces, dipole).

Use it through ``tace.label_ase`` with
``calculator='tace_aiida.labelling.pyscf_calculator.PySCFCalculator'`` and, e.g.,
``parameters={'xc': 'PBE', 'basis': 'def2-SVP'}``. Closed shells (``spin=0``) run restricted
Kohn-Sham (RKS), open shells unrestricted (UKS); ``xc='HF'`` gives Hartree-Fock. An SCF that DIIS
does not converge in ``max_cycle`` cycles (stretched bonds MD explores) continues with PySCF's
second-order solver from the last density before it counts as failed. A uniform
``electric_field`` (V/Å) adds ``F·r`` to every electron's one-electron Hamiltonian and ``-Z F·R`` to
every nucleus, so the energy is that of the molecule in the field (about the origin of the
coordinates) and the forces its exact gradient. Results: energy in eV, forces in eV/Å, dipole in
e Å about the origin of the coordinates (PySCF works in Hartree and Bohr); on request, by central
differences in fields of +-``field_step`` V/Å along x, y and z (six more SCF runs), the
polarizability (Å^3, the volume alpha / (4 pi eps0)) and the Born effective charges
``Z_A[j, k] = dF_Ak / dE_j`` (e, ``[n_atoms, 3, 3]``).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from ase import Atoms
from ase.calculators.calculator import Calculator, CalculatorSetupError, SCFError, all_changes
from ase.units import Bohr, Hartree

#: One atomic unit of electric field (Hartree / (e Bohr)) in V/Å.
FIELD_AU = Hartree / Bohr
#: The Coulomb constant 1/(4 pi eps0) in eV Å / e^2 (e Å^2/V times this is Å^3).
COULOMB = Hartree * Bohr
#: Properties from the finite-field differences.
FIELD_RESPONSE = ("polarizability", "born_effective_charges")


class PySCFCalculator(Calculator):
    """Kohn-Sham DFT of a non-periodic molecule with PySCF.

    Parameters: ``xc`` (functional, default PBE), ``basis`` (default def2-SVP), ``charge`` (e),
    ``spin`` (number of unpaired electrons, 2S), ``electric_field`` (3 values, V/Å, or None),
    ``conv_tol`` (Hartree), ``max_cycle``, ``grid_level`` (DFT integration grid, 0-9),
    ``density_fit`` (RI-J with the default auxiliary basis), ``field_step`` (V/Å, of the finite-field
    differences; 10^-3 au).
    """

    implemented_properties = ["energy", "free_energy", "forces", "dipole", *FIELD_RESPONSE]
    default_parameters: dict[str, Any] = {
        "xc": "PBE",
        "basis": "def2-SVP",
        "charge": 0,
        "spin": 0,
        "electric_field": None,
        "conv_tol": 1e-9,
        "max_cycle": 100,
        "grid_level": 3,
        "density_fit": False,
        "field_step": 1e-3 * FIELD_AU,
    }

    def __init__(self, **kwargs) -> None:
        self._scf = None
        super().__init__(**kwargs)

    def reset(self) -> None:
        super().reset()
        self._scf = None

    def calculate(self, atoms: Atoms | None = None, properties=("energy",), system_changes=all_changes) -> None:
        super().calculate(atoms, properties, system_changes)
        if self.atoms.pbc.any():
            raise CalculatorSetupError(f"PySCFCalculator handles molecules only; got pbc={self.atoms.pbc.tolist()}")
        if self._scf is None or system_changes:
            self._scf = self._run_scf()
            nuclear = -np.dot(self._scf.mol.atom_charges(), self._scf.mol.atom_coords() @ self._field_au())
            self.results["energy"] = self.results["free_energy"] = float(self._scf.e_tot + nuclear) * Hartree
        if "forces" in properties:
            gradient = np.asarray(self._scf.nuc_grad_method().kernel()) + self._field_gradient()
            self.results["forces"] = -gradient * Hartree / Bohr
        if "dipole" in properties:
            self.results["dipole"] = np.asarray(self._scf.dip_moment(unit="AU", verbose=0)) * Bohr
        if set(properties) & set(FIELD_RESPONSE):
            self.results.update(self._finite_field_response())

    def _finite_field_response(self) -> dict[str, np.ndarray]:
        """Polarizability ``[3, 3]`` (Å^3) and Born charges ``[n_atoms, 3, 3]`` (e) by central differences of the
        dipole and the forces in fields of +-``field_step`` along each axis."""
        step = float(self.parameters["field_step"])
        centre = self._field_au() * FIELD_AU
        d_dipole, d_forces = np.zeros((3, 3)), np.zeros((len(self.atoms), 3, 3))
        for axis in range(3):
            results = []
            for sign in (1.0, -1.0):
                shifted = self.atoms.copy()
                shifted.calc = PySCFCalculator(**{**self.parameters, "electric_field": centre + sign * step * np.eye(3)[axis]})
                results.append((shifted.get_dipole_moment(), shifted.get_forces()))
            d_dipole[:, axis] = (results[0][0] - results[1][0]) / (2 * step)
            d_forces[:, axis, :] = (results[0][1] - results[1][1]) / (2 * step)
        return {"polarizability": d_dipole * COULOMB, "born_effective_charges": d_forces}

    def _field_au(self) -> np.ndarray:
        """The field in atomic units, ``[3]`` (zeros without one)."""
        field = self.parameters["electric_field"]
        values = np.zeros(3) if field is None else np.asarray(field, dtype=float)
        if values.shape != (3,) or not np.isfinite(values).all():
            raise CalculatorSetupError(f"electric_field must be 3 finite numbers (V/Å), not {field!r}")
        return values / FIELD_AU

    def _field_gradient(self) -> np.ndarray:
        """The field's part of the energy gradient ``[n_atoms, 3]`` (Hartree/Bohr): the nuclei's ``-Z F`` and
        the electrons' ``-2 sum_{p on A} D_pq <d_k p| F.r |q>`` from the moving basis functions."""
        field = self._field_au()
        mol = self._scf.mol
        gradient = -mol.atom_charges()[:, None] * field[None, :]
        if not field.any():
            return gradient
        density = np.asarray(self._scf.make_rdm1())
        density = density.sum(axis=0) if density.ndim == 3 else density
        # int1e_irp holds <q| r_j d_k |p> as component (j, k); its AO transpose is <d_k p| r_j |q>.
        moving = np.einsum("j,jkqp->kpq", field, mol.intor("int1e_irp", comp=9).reshape(3, 3, mol.nao, mol.nao))
        for atom, (_, _, start, stop) in enumerate(mol.aoslice_by_atom()):
            gradient[atom] -= 2.0 * np.einsum("kpq,pq->k", moving[:, start:stop], density[start:stop])
        return gradient

    def _run_scf(self):
        """The converged PySCF mean-field object of ``self.atoms`` (in the field, when there is one)."""
        from pyscf import dft, gto

        p = self.parameters
        molecule = gto.M(
            atom=[(symbol, tuple(position)) for symbol, position in
                  zip(self.atoms.get_chemical_symbols(), self.atoms.positions, strict=True)],
            unit="Angstrom", basis=p["basis"], charge=p["charge"], spin=p["spin"], verbose=0,
        )
        method = dft.RKS(molecule) if p["spin"] == 0 else dft.UKS(molecule)
        method.xc = p["xc"]
        method.conv_tol = p["conv_tol"]
        method.max_cycle = p["max_cycle"]
        method.grids.level = p["grid_level"]
        if p["density_fit"]:
            method = method.density_fit()
        field = self._field_au()
        if field.any():
            hcore = method.get_hcore()
            potential = np.einsum("x,xij->ij", field, molecule.intor("int1e_r", comp=3))
            method.get_hcore = lambda *_: hcore + potential
        method.kernel()
        if not method.converged:
            # DIIS oscillates on stretched bonds; the second-order solver, from the last density, converges there.
            second_order = method.newton()
            second_order.kernel(method.make_rdm1())
            method = second_order
        if not method.converged:
            raise SCFError(f"PySCF {p['xc']}/{p['basis']} SCF did not converge in {p['max_cycle']} cycles, nor with "
                           "the second-order solver after them")
        return method
