"""``tace-label``: label every structure of ``structures.extxyz`` with an ASE calculator.

Runs in a CalcJob's working directory (locally, on a cluster, on a dask worker) and needs no
database. Reads ``label.json``::

    {"calculator": "ase.calculators.emt.EMT", "parameters": {...}, "properties": ["energy", "forces"],
     "condition_parameters": {"charge": "charge", "multiplicity": "multiplicity"}}

``condition_parameters`` maps a keyword of the calculator to a condition of each structure (its
``info``, as the model reads it: :func:`~tace_aiida.model.structure_conditions.conditions`): ``charge`` (e),
``multiplicity`` (2S+1), ``unpaired_electrons`` (2S) or ``electric_field`` (3 values, V/Å), so a
structure is labelled at its own charge, spin and field. A structure whose charge, spin or field is
not neutral but reaches no keyword fails (it would be labelled as neutral); the ``fidelity`` is the
labeller's own level of theory and needs no keyword. ``properties`` may add ``dipole`` (e Å) and
``polarizability`` (Å^3, into the frame's info; PySCFCalculator gives it), molecules only, for
models with those heads, and ``born_effective_charges`` (e, ``Z_A[j, k] = dF_Ak / dE_j``, into the
frame's arrays as 9 values per atom; any structure whose calculator gives them), for ``field_dipole``
models. The job writes ``labelled.extxyz`` (the structures that succeeded, labels in eV, eV/Å, eV/Å^3, each
frame's info keeping ``input_index``) and ``label_report.json`` (one entry per input structure:
``{"index": i, "status": "ok" | "failed", "error": "...", "seconds": t}``). One structure's
failure (overlapping atoms or a collapsed cell as the trainer refuses them, no SCF convergence, a
crash, a missing or non-finite force) never stops the others and never becomes a label. Bad
settings, an import path that does not import, and an empty or malformed structure file stop the
job before any labelling, with one line that names the value.
"""

from __future__ import annotations

import importlib
import json
import sys
import time
import traceback
from pathlib import Path

import numpy as np
from ase import Atoms
from ase.calculators.calculator import Calculator
from ase.calculators.singlepoint import SinglePointCalculator
from ase.io import write

from tace_aiida.model.keys import ELECTRIC_FIELD, SPIN_MULTIPLICITY, TOTAL_CHARGE
from tace_aiida.model.structure_conditions import conditions
from tace_aiida.model.validation import check_settings, check_structure, read_structures

SETTINGS = "label.json"
STRUCTURES = "structures.extxyz"
LABELLED = "labelled.extxyz"
REPORT = "label_report.json"
PROPERTIES = ("energy", "forces", "stress")
OPTIONAL_PROPERTIES = ("dipole", "polarizability", "born_effective_charges")
CONDITION_VALUES = ("charge", "multiplicity", "unpaired_electrons", "electric_field")
#: The info condition that is not neutral -> the values of ``condition_parameters`` that pass it to a calculator.
CARRIED_BY = {"charge": {"charge"}, "spin": {"multiplicity", "unpaired_electrons"}, "electric_field": {"electric_field"}}
SETTING_TYPES = {"calculator": str, "parameters": dict, "properties": list[str], "condition_parameters": dict}


def calculator_class(path: str) -> type[Calculator]:
    """The class named by ``package.module.Class`` or ``package.module:Class``; an error names the
    path and the part of it that did not import."""
    module_name, _, class_name = path.replace(":", ".").rpartition(".")
    if not module_name or not class_name:
        raise ValueError(f"the ASE calculator {path!r} is no import path such as 'ase.calculators.emt.EMT'")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as error:
        missing = error.name or module_name
        if module_name == missing or module_name.startswith(missing + "."):
            reason = f"module {missing!r} was not found"
        else:
            reason = f"module {module_name!r} needs module {missing!r}, which was not found"
        raise ValueError(f"cannot import the ASE calculator {path!r}: {reason}") from error
    except Exception as error:  # importing runs the module's code, which may fail in any way
        raise ValueError(f"cannot import the ASE calculator {path!r}: importing module {module_name!r} failed: "
                         f"{type(error).__name__}: {error}") from error
    if not hasattr(module, class_name):
        raise ValueError(f"cannot import the ASE calculator {path!r}: module {module_name!r} has no {class_name!r}")
    return getattr(module, class_name)


def read_settings(folder: Path) -> dict:
    """``label.json`` checked: a calculator import path, its keyword arguments, the properties."""
    path = folder / SETTINGS
    try:
        settings = json.loads(path.read_text())
    except (OSError, ValueError) as error:
        raise ValueError(f"cannot read {path}: {error}") from None
    if not isinstance(settings, dict) or "calculator" not in settings or set(settings) - set(SETTING_TYPES):
        raise ValueError(f"{path} must map 'calculator' (and optionally {sorted(set(SETTING_TYPES) - {'calculator'})}) "
                         f"to values, not {settings!r}")
    known = PROPERTIES + OPTIONAL_PROPERTIES
    rules = {
        "properties": (lambda names: 0 < len(names) and set(names) <= set(known), f"a non-empty list of {known}"),
        "condition_parameters": (lambda mapping: set(mapping.values()) <= set(CONDITION_VALUES),
                                 f"a mapping of calculator keywords to {CONDITION_VALUES}"),
    }
    check_settings(settings, SETTING_TYPES, rules, f"{path} setting")
    return settings


def condition_keywords(atoms: Atoms, condition_parameters: dict[str, str]) -> dict:
    """The calculator keywords that carry the conditions of ``atoms`` (``condition_parameters``: keyword ->
    condition); an error when a charge, spin or field that is not neutral reaches no keyword."""
    values = conditions(atoms)
    charge, multiplicity = float(values[TOTAL_CHARGE]), float(values[SPIN_MULTIPLICITY])
    field = values[ELECTRIC_FIELD]
    if charge != round(charge) or multiplicity != round(multiplicity):
        raise ValueError(f"a labeller needs an integer charge and multiplicity, not {charge} and {multiplicity}")
    by_name = {"charge": int(round(charge)), "multiplicity": int(round(multiplicity)),
               "unpaired_electrons": int(round(multiplicity)) - 1, "electric_field": np.array(field, dtype=float)}
    passed = set(condition_parameters.values())
    lost = {"charge": charge != 0, "spin": multiplicity != 1, "electric_field": bool(np.any(field != 0))}
    for name, not_neutral in lost.items():
        if not_neutral and not CARRIED_BY[name] & passed:
            value = {"charge": charge, "spin": multiplicity, "electric_field": field.tolist()}[name]
            raise ValueError(f"the structure's {name} is {value}, but condition_parameters passes it to no keyword "
                             "of the calculator, which would label it as neutral")
    return {keyword: by_name[name] for keyword, name in condition_parameters.items()}


def label_structure(atoms: Atoms, calculator: Calculator, properties: list[str]) -> Atoms:
    """``atoms`` with the requested labels on a SinglePointCalculator; raises on any failure."""
    work = atoms.copy()
    work.calc = calculator
    results = {"energy": work.get_potential_energy()}
    if "forces" in properties:
        results["forces"] = work.get_forces()
    if "stress" in properties and work.pbc.all():
        results["stress"] = work.get_stress(voigt=True)
    if "dipole" in properties and not work.pbc.any():
        results["dipole"] = work.get_dipole_moment()
    if "polarizability" in properties and not work.pbc.any():
        results["polarizability"] = work.calc.get_property("polarizability", work)
    if "born_effective_charges" in properties:
        results["born_effective_charges"] = work.calc.get_property("born_effective_charges", work)
    for key, value in results.items():
        if not np.all(np.isfinite(value)):
            raise ValueError(f"the calculator returned a non-finite {key}")
    labelled = atoms.copy()
    # Tensor labels the input brought are replaced, like energy and forces, not kept beside the new ones.
    labelled.info.pop("polarizability", None)
    if "born_effective_charges" in labelled.arrays:
        labelled.set_array("born_effective_charges", None)
    info = {key: results.pop(key) for key in ("polarizability",) if key in results}
    if "born_effective_charges" in results:
        born = np.asarray(results.pop("born_effective_charges"), dtype=float)
        if born.shape != (len(atoms), 3, 3):
            raise ValueError(f"the calculator returned born_effective_charges of shape {born.shape}, "
                             f"expected ({len(atoms)}, 3, 3)")
        labelled.new_array("born_effective_charges", born.reshape(len(atoms), 9))
    labelled.calc = SinglePointCalculator(labelled, **results)
    labelled.info.update(info)
    return labelled


def label_all(folder: Path) -> list[dict]:
    """Label every structure in ``folder``; returns the per-structure report."""
    settings = read_settings(folder)
    calculator_type = calculator_class(settings["calculator"])
    properties = settings.get("properties", list(PROPERTIES))
    structures = read_structures(folder / STRUCTURES)
    report, labelled = [], []
    for index, atoms in enumerate(structures):
        started = time.monotonic()
        try:
            check_structure(atoms)
            keywords = condition_keywords(atoms, settings.get("condition_parameters", {}))
            calculator = calculator_type(**{**settings.get("parameters", {}), **keywords})
            frame = label_structure(atoms, calculator, properties)
        except Exception as error:  # a labeller may fail in any way; record it and go on
            report.append({"index": index, "status": "failed", "error": f"{type(error).__name__}: {error}",
                           "traceback": traceback.format_exc(limit=3), "seconds": time.monotonic() - started})
            continue
        frame.info["input_index"] = index
        labelled.append(frame)
        report.append({"index": index, "status": "ok", "seconds": time.monotonic() - started})
    write(folder / LABELLED, labelled, format="extxyz")
    (folder / REPORT).write_text(json.dumps(report, indent=1))
    return report


def main() -> int:
    try:
        report = label_all(Path.cwd())
    except (ValueError, OSError) as error:
        print(f"tace-label: {error}", file=sys.stderr)
        return 2
    failed = sum(entry["status"] == "failed" for entry in report)
    print(f"labelled {len(report) - failed} of {len(report)} structures")
    return 0


if __name__ == "__main__":
    sys.exit(main())
