"""``PySCFCalculator``: an ASE calculator for molecules with PySCF's Kohn-Sham DFT (energy and analytic forces).

Use it through ``tace.label_ase`` with
``calculator='tace_aiida.labelling.pyscf_calculator.PySCFCalculator'`` and, e.g.,
``parameters={'xc': 'PBE', 'basis': 'def2-SVP'}``. Closed shells (``spin=0``) run restricted
Kohn-Sham (RKS), open shells unrestricted (UKS); ``xc='HF'`` gives Hartree-Fock. Results: energy in
eV, forces in eV/Å (PySCF works in Hartree and Bohr).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from ase import Atoms
from ase.calculators.calculator import Calculator, CalculatorSetupError, SCFError, all_changes
from ase.units import Bohr, Hartree


class PySCFCalculator(Calculator):
    """Kohn-Sham DFT of a non-periodic molecule with PySCF.

    Parameters: ``xc`` (functional, default PBE), ``basis`` (default def2-SVP), ``charge`` (e),
    ``spin`` (number of unpaired electrons, 2S), ``conv_tol`` (Hartree), ``max_cycle``,
    ``grid_level`` (DFT integration grid, 0-9), ``density_fit`` (RI-J with the default auxiliary basis).
    """

    implemented_properties = ["energy", "free_energy", "forces"]
    default_parameters: dict[str, Any] = {
        "xc": "PBE",
        "basis": "def2-SVP",
        "charge": 0,
        "spin": 0,
        "conv_tol": 1e-9,
        "max_cycle": 100,
        "grid_level": 3,
        "density_fit": False,
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
            self.results["energy"] = self.results["free_energy"] = float(self._scf.e_tot) * Hartree
        if "forces" in properties:
            gradient = np.asarray(self._scf.nuc_grad_method().kernel())
            self.results["forces"] = -gradient * Hartree / Bohr

    def _run_scf(self):
        """The converged PySCF mean-field object of ``self.atoms``."""
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
        method.kernel()
        if not method.converged:
            raise SCFError(f"PySCF {p['xc']}/{p['basis']} SCF did not converge in {p['max_cycle']} cycles")
        return method
