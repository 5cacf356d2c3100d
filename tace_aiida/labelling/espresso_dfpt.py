"""``EspressoDFPTCalculator``: pw.x energies, forces and stress, and ph.x's Born effective charges of crystals.

Use it through ``tace.label_ase`` with
``calculator='tace_aiida.labelling.espresso_dfpt.EspressoDFPTCalculator'`` and, e.g.,
``parameters={'pseudopotentials': {'Al': 'Al.pz-vbc.UPF', 'As': 'As.pz-bhs.UPF'}, 'kpts': [6, 6, 6],
'koffset': [1, 1, 1], 'input_data': {'system': {'ecutwfc': 24.0}}}`` (``recipes.espresso_dfpt``), and
``properties`` adding ``born_effective_charges``. pw.x runs a self-consistent calculation of the
periodic cell; on request ph.x then runs density-functional perturbation theory for a uniform
electric field at Γ (``epsil``, no phonons), which gives the Born effective charges
``Z_A[j, k] = dF_Ak / dE_j`` (e, ``[n_atoms, 3, 3]``, as ph.x prints them, without the acoustic sum
rule imposed) and the high-frequency dielectric tensor ``dielectric_tensor`` (``[3, 3]``, relative
permittivity). Insulators only: ph.x refuses the field perturbation of a metal.

Results in eV, eV/Å and eV/Å^3 (ASE's units). Both programs run in ``directory`` (ASE's calculator
attribute; default ``espresso``), their inputs and outputs kept there; a failed run raises with the
tail of its output.
"""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

import numpy as np
from ase import Atoms
from ase.calculators.calculator import Calculator, CalculatorSetupError, SCFError, all_changes
from ase.io import read
from ase.io.espresso import read_espresso_ph, write_espresso_in, write_espresso_ph

#: The UPF files Debian's quantum-espresso package installs.
DEBIAN_PSEUDO_DIR = "/usr/share/espresso/pseudo"
#: Properties from ph.x.
DFPT_PROPERTIES = ("born_effective_charges", "dielectric_tensor")
PREFIX = "tace"


class EspressoDFPTCalculator(Calculator):
    """Quantum ESPRESSO for periodic cells: pw.x (energy, forces, stress), ph.x at Γ (Born charges, ε∞).

    Parameters: ``pseudopotentials`` ({symbol: UPF file name}), ``pseudo_dir`` (default
    :data:`DEBIAN_PSEUDO_DIR`), ``kpts`` (Monkhorst-Pack mesh), ``koffset`` (0 or 1 per direction),
    ``input_data`` (pw.x namelists, ASE style, e.g. ``{'system': {'ecutwfc': 30}}``; the cutoff is
    required), ``ph_input_data`` (extra ``inputph`` entries, default ``tr2_ph`` 1e-14),
    ``pw_command`` and ``ph_command`` (argument lists; default ``['pw.x']``, ``['ph.x']``).
    """

    implemented_properties = ["energy", "free_energy", "forces", "stress", *DFPT_PROPERTIES]
    default_parameters: dict[str, Any] = {
        "pseudopotentials": {},
        "pseudo_dir": DEBIAN_PSEUDO_DIR,
        "kpts": (4, 4, 4),
        "koffset": (0, 0, 0),
        "input_data": {},
        "ph_input_data": {},
        "pw_command": ["pw.x"],
        "ph_command": ["ph.x"],
    }

    def __init__(self, directory: str = "espresso", **kwargs) -> None:
        super().__init__(directory=directory, **kwargs)

    def calculate(self, atoms: Atoms | None = None, properties=("energy",), system_changes=all_changes) -> None:
        super().calculate(atoms, properties, system_changes)
        if not self.atoms.pbc.all():
            raise CalculatorSetupError(f"EspressoDFPTCalculator needs a cell periodic in 3 directions; got pbc={self.atoms.pbc.tolist()}")
        folder = Path(self.directory)
        folder.mkdir(parents=True, exist_ok=True)
        if system_changes or "energy" not in self.results:
            self.results = self._run_pw(folder)
        if set(properties) & set(DFPT_PROPERTIES) and "born_effective_charges" not in self.results:
            self.results.update(self._run_ph(folder))

    def _run_pw(self, folder: Path) -> dict[str, Any]:
        """Energy (eV), forces ``[n_atoms, 3]`` (eV/Å) and stress (Voigt, eV/Å^3) from one pw.x SCF run."""
        symbols = sorted(set(self.atoms.get_chemical_symbols()))
        pseudopotentials = self.parameters["pseudopotentials"]
        missing = [symbol for symbol in symbols if symbol not in pseudopotentials]
        if missing:
            raise CalculatorSetupError(f"no pseudopotential for {missing} in pseudopotentials={pseudopotentials}")
        input_data = {section: dict(values) for section, values in self.parameters["input_data"].items()}
        control = input_data.setdefault("control", {})
        control.update(calculation="scf", prefix=PREFIX, outdir="out", pseudo_dir=self.parameters["pseudo_dir"],
                       tprnfor=True, tstress=True)
        with open(folder / "pw.in", "w") as handle:
            write_espresso_in(handle, self.atoms, input_data=input_data, kpts=tuple(self.parameters["kpts"]),
                              koffset=tuple(self.parameters["koffset"]),
                              pseudopotentials={symbol: pseudopotentials[symbol] for symbol in symbols})
        output = self._run(self.parameters["pw_command"], folder, "pw")
        if "convergence NOT achieved" in output or "End of self-consistent calculation" not in output:
            raise SCFError(f"pw.x did not converge; see {folder / 'pw.out'}")
        labelled = read(folder / "pw.out", format="espresso-out")
        results = {"energy": labelled.get_potential_energy(), "forces": labelled.get_forces(),
                   "stress": labelled.get_stress(voigt=True)}
        results["free_energy"] = results["energy"]
        return results

    def _run_ph(self, folder: Path) -> dict[str, np.ndarray]:
        """Born charges ``[n_atoms, 3, 3]`` (e) and ε∞ ``[3, 3]`` from ph.x's electric-field perturbation at Γ."""
        inputph = {"prefix": PREFIX, "outdir": "out", "fildyn": "dynamical_matrix", "epsil": True, "trans": False,
                   "tr2_ph": 1e-14, **self.parameters["ph_input_data"]}
        with open(folder / "ph.in", "w") as handle:
            write_espresso_ph(handle, input_data={"inputph": inputph}, qpts=(0.0, 0.0, 0.0))
        output = self._run(self.parameters["ph_command"], folder, "ph")
        with open(folder / "ph.out") as handle:
            found = read_espresso_ph(handle)
        at_gamma = next(iter(found.values()), {}) if found else {}
        if at_gamma.get("borneffcharge") is None or at_gamma.get("dieltensor") is None:
            raise SCFError(f"ph.x gave no Born effective charges (a metal?): {output[-500:]}")
        return {"born_effective_charges": np.array(at_gamma["borneffcharge"], dtype=float).reshape(len(self.atoms), 3, 3),
                "dielectric_tensor": np.array(at_gamma["dieltensor"], dtype=float)}

    @staticmethod
    def _run(command: list[str], folder: Path, name: str) -> str:
        """Run ``command -in {name}.in`` in ``folder``, output into ``{name}.out``; its text, or an error with its tail."""
        with open(folder / f"{name}.out", "w") as handle:
            finished = subprocess.run([*command, "-in", f"{name}.in"], cwd=folder, stdout=handle,
                                      stderr=subprocess.STDOUT, check=False)
        output = (folder / f"{name}.out").read_text(errors="replace")
        if finished.returncode != 0:
            raise RuntimeError(f"{' '.join(command)} failed with exit code {finished.returncode}: {output[-500:]}")
        return output
