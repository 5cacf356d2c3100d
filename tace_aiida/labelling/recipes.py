"""Ready-made ``calculator``/``parameters`` settings of ``tace.label_ase`` for common labellers.

Each function returns ``{"calculator": import path, "parameters": keyword arguments}`` and, for
labellers that take a charge, spin or field, ``"condition_parameters"`` (which keyword gets which
condition of each structure, see :mod:`.runner`); :func:`as_inputs` turns one into the CalcJob's
inputs::

    builder = AseLabelCalculation.get_builder()
    builder.update(as_inputs(cp2k_pbe(kpoints=(3, 3, 3))))

The values behind them, for use without these helpers:

- EMT (tests only): ``calculator='ase.calculators.emt.EMT'``, no parameters.
- GFN2-xTB (``pip install tblite``): ``calculator='tblite.ase.TBLite'``,
  ``parameters={'method': 'GFN2-xTB', 'accuracy': 1.0, 'electronic_temperature': 300.0, 'verbosity': 0}``,
  ``condition_parameters={'charge': 'charge', 'multiplicity': 'multiplicity'}``
  (molecules and periodic cells; stress for periodic cells; dipoles of molecules).
- CP2K PBE (Debian ``cp2k cp2k-data``; ASE's ``CP2K`` calculator drives ``cp2k_shell.psmp``):
  ``calculator='ase.calculators.cp2k.CP2K'``, ``parameters={'command': 'cp2k_shell.psmp', 'xc': 'PBE',
  'basis_set': 'DZVP-MOLOPT-SR-GTH', 'basis_set_file': 'BASIS_MOLOPT', 'pseudo_potential': 'GTH-PBE',
  'potential_file': 'GTH_POTENTIALS', 'cutoff': <eV>, 'max_scf': 100, 'stress_tensor': True,
  'inp': <&FORCE_EVAL &DFT &KPOINTS ... template>}``; a small cell needs the k-point mesh of the
  template (ASE's calculator alone samples only Γ). ``cutoff`` is in eV in ASE (CP2K's ``CUTOFF``).
  CP2K does not symmetrise its results: take odd (Γ-centred) meshes. An even Monkhorst-Pack mesh
  can break the cell's symmetry (Si2 with 2x2x2: forces of 0.03 eV/Å on the perfect crystal and a
  shear stress of 0.04 eV/Å^3; with 3x3x3: zero forces, isotropic stress).
- PySCF (``pip install pyscf``; molecules only):
  ``calculator='tace_aiida.labelling.pyscf_calculator.PySCFCalculator'``,
  ``parameters={'xc': 'PBE', 'basis': 'def2-SVP'}``,
  ``condition_parameters={'charge': 'charge', 'spin': 'unpaired_electrons', 'electric_field': 'electric_field'}``
  (dipoles too; forces in a field are the exact gradient).
- Quantum ESPRESSO with Born effective charges (Debian ``quantum-espresso``; periodic insulators):
  ``calculator='tace_aiida.labelling.espresso_dfpt.EspressoDFPTCalculator'``,
  ``parameters={'pseudopotentials': {symbol: UPF file}, 'kpts': [n1, n2, n3], 'koffset': [1, 1, 1],
  'input_data': {'system': {'ecutwfc': <Ry>}}}``; ``properties`` may add ``born_effective_charges``
  (ph.x at Γ). For energies and forces alone, ``tace.label_qe`` (aiida-quantumespresso) is the
  better choice: it restarts failed runs and keeps pw.x's outputs in the provenance graph.

All labels come out in eV, eV/Å and eV/Å^3 (ASE's units).
"""

from __future__ import annotations

from typing import Any

from aiida import orm
from ase.units import Rydberg

Recipe = dict[str, Any]


def as_inputs(recipe: Recipe) -> dict[str, orm.Data]:
    """The ``calculator``, ``parameters`` (and ``condition_parameters``) inputs of ``tace.label_ase`` for ``recipe``."""
    inputs = {"calculator": orm.Str(recipe["calculator"]), "parameters": orm.Dict(recipe["parameters"])}
    if recipe.get("condition_parameters"):
        inputs["condition_parameters"] = orm.Dict(recipe["condition_parameters"])
    return inputs


def emt() -> Recipe:
    """ASE's effective-medium theory (Al, Cu, Ag, Au, Ni, Pd, Pt; for tests)."""
    return {"calculator": "ase.calculators.emt.EMT", "parameters": {}}


def gfn2_xtb(accuracy: float = 1.0, electronic_temperature: float = 300.0, charge: int | None = None,
             multiplicity: int | None = None) -> Recipe:
    """GFN2-xTB tight binding from tblite; ``electronic_temperature`` in K.

    Each structure's charge and multiplicity (its info) reach the calculator, except a ``charge`` or
    ``multiplicity`` given here, which then holds for every structure. Not the electric field: tblite
    0.8's Python interface fails on any field (it hands a NumPy array to its C library).
    """
    parameters: dict[str, Any] = {"method": "GFN2-xTB", "accuracy": accuracy,
                                  "electronic_temperature": electronic_temperature, "verbosity": 0}
    condition_parameters = {}
    if charge is not None:
        parameters["charge"] = charge
    else:
        condition_parameters["charge"] = "charge"
    if multiplicity is not None:
        parameters["multiplicity"] = multiplicity
    else:
        condition_parameters["multiplicity"] = "multiplicity"
    return {"calculator": "tblite.ase.TBLite", "parameters": parameters, "condition_parameters": condition_parameters}


def cp2k_kpoints_template(kpoints: tuple[int, int, int]) -> str:
    """A CP2K input template with a Monkhorst-Pack mesh of ``kpoints`` points."""
    if len(kpoints) != 3 or any(int(n) != n or n < 1 for n in kpoints):
        raise ValueError(f"kpoints must be three positive integers, not {kpoints!r}")
    mesh = " ".join(str(int(n)) for n in kpoints)
    return (
        "&FORCE_EVAL\n  &DFT\n    &KPOINTS\n"
        f"      SCHEME MONKHORST-PACK {mesh}\n"
        "    &END KPOINTS\n  &END DFT\n&END FORCE_EVAL\n"
    )


def cp2k_pbe(kpoints: tuple[int, int, int] | None = (3, 3, 3), cutoff_ry: float = 300.0, max_scf: int = 100,
             basis_set: str = "DZVP-MOLOPT-SR-GTH", command: str = "cp2k_shell.psmp",
             threads: int | None = None) -> Recipe:
    """CP2K PBE with GTH pseudopotentials and MOLOPT basis sets (small periodic cells).

    ``kpoints``: Monkhorst-Pack mesh, odd (see the module docstring); ``None`` samples Γ only (large
    cells, molecules). ``cutoff_ry``: plane-wave cutoff of the finest grid in Ry. ``threads``:
    ``OMP_NUM_THREADS`` of CP2K (default: inherited; one thread is faster on a busy machine).
    """
    if threads is not None and (int(threads) != threads or threads < 1):
        raise ValueError(f"threads must be a positive integer, not {threads!r}")
    parameters: dict[str, Any] = {
        "command": command if threads is None else f"env OMP_NUM_THREADS={int(threads)} {command}",
        "xc": "PBE",
        "basis_set": basis_set,
        "basis_set_file": "BASIS_MOLOPT",
        "pseudo_potential": "GTH-PBE",
        "potential_file": "GTH_POTENTIALS",
        "cutoff": cutoff_ry * Rydberg,
        "max_scf": max_scf,
        "stress_tensor": True,
    }
    if kpoints is not None:
        parameters["inp"] = cp2k_kpoints_template(kpoints)
    return {"calculator": "ase.calculators.cp2k.CP2K", "parameters": parameters}


def pyscf_dft(xc: str = "PBE", basis: str = "def2-SVP", charge: int | None = None, spin: int | None = None) -> Recipe:
    """Kohn-Sham DFT of molecules with PySCF (RKS when ``spin`` = 2S = 0, else UKS).

    Each structure's charge, spin and electric field (its info) reach the calculator, except a
    ``charge`` or ``spin`` given here, which then holds for every structure.
    """
    parameters: dict[str, Any] = {"xc": xc, "basis": basis}
    condition_parameters = {"electric_field": "electric_field"}
    if charge is not None:
        parameters["charge"] = charge
    else:
        condition_parameters["charge"] = "charge"
    if spin is not None:
        parameters["spin"] = spin
    else:
        condition_parameters["spin"] = "unpaired_electrons"
    return {"calculator": "tace_aiida.labelling.pyscf_calculator.PySCFCalculator", "parameters": parameters,
            "condition_parameters": condition_parameters}


def espresso_dfpt(pseudopotentials: dict[str, str], ecutwfc_ry: float, kpts: tuple[int, int, int] = (4, 4, 4),
                  koffset: tuple[int, int, int] = (1, 1, 1), pseudo_dir: str | None = None,
                  threads: int | None = None) -> Recipe:
    """pw.x energies, forces and stress and ph.x Born effective charges of periodic insulators.

    ``pseudopotentials``: {symbol: UPF file name} in ``pseudo_dir`` (default Debian's
    ``/usr/share/espresso/pseudo``); ``ecutwfc_ry``: wave-function cutoff (Ry); ``kpts``/``koffset``:
    Monkhorst-Pack mesh and shift (Born charges converge slowly with it: check the acoustic sum
    rule, ``sum_A Z_A = 0``); ``threads``: ``OMP_NUM_THREADS`` of both programs.
    """
    if not ecutwfc_ry > 0:
        raise ValueError(f"ecutwfc_ry must be a positive cutoff in Ry, not {ecutwfc_ry!r}")
    prefix = [] if threads is None else ["env", f"OMP_NUM_THREADS={int(threads)}"]
    parameters: dict[str, Any] = {"pseudopotentials": dict(pseudopotentials), "kpts": list(kpts), "koffset": list(koffset),
                                  "input_data": {"system": {"ecutwfc": float(ecutwfc_ry)}},
                                  "pw_command": [*prefix, "pw.x"], "ph_command": [*prefix, "ph.x"]}
    if pseudo_dir is not None:
        parameters["pseudo_dir"] = str(pseudo_dir)
    return {"calculator": "tace_aiida.labelling.espresso_dfpt.EspressoDFPTCalculator", "parameters": parameters}
