"""``tace-label``: label every structure of ``structures.extxyz`` with an ASE calculator.

Runs in a CalcJob's working directory (locally, on a cluster, on a dask worker) and needs no
database. Reads ``label.json``::

    {"calculator": "ase.calculators.emt.EMT", "parameters": {...}, "properties": ["energy", "forces"]}

and writes ``labelled.extxyz`` (the structures that succeeded, labels in eV, eV/Å, eV/Å^3, each
frame's info keeping ``input_index``) and ``label_report.json`` (one entry per input structure:
``{"index": i, "status": "ok" | "failed", "error": "...", "seconds": t}``). One structure's
failure (no SCF convergence, a crash, a missing or non-finite force) never stops the others and
never becomes a label.
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
from ase.io import read, write

SETTINGS = "label.json"
STRUCTURES = "structures.extxyz"
LABELLED = "labelled.extxyz"
REPORT = "label_report.json"


def calculator_class(path: str) -> type[Calculator]:
    """The class named by ``package.module.Class`` or ``package.module:Class``."""
    module_name, _, class_name = path.replace(":", ".").rpartition(".")
    try:
        return getattr(importlib.import_module(module_name), class_name)
    except (ImportError, AttributeError, ValueError) as error:
        raise ValueError(f"cannot import the ASE calculator {path!r}: {error}") from error


def label_structure(atoms: Atoms, calculator: Calculator, properties: list[str]) -> Atoms:
    """``atoms`` with the requested labels on a SinglePointCalculator; raises on any failure."""
    work = atoms.copy()
    work.calc = calculator
    results = {"energy": work.get_potential_energy()}
    if "forces" in properties:
        results["forces"] = work.get_forces()
    if "stress" in properties and work.pbc.all():
        results["stress"] = work.get_stress(voigt=True)
    for key, value in results.items():
        if not np.all(np.isfinite(value)):
            raise ValueError(f"the calculator returned a non-finite {key}")
    labelled = atoms.copy()
    labelled.calc = SinglePointCalculator(labelled, **results)
    return labelled


def label_all(folder: Path) -> list[dict]:
    """Label every structure in ``folder``; returns the per-structure report."""
    settings = json.loads((folder / SETTINGS).read_text())
    calculator_type = calculator_class(settings["calculator"])
    properties = settings.get("properties", ["energy", "forces", "stress"])
    structures = read(folder / STRUCTURES, index=":")
    report, labelled = [], []
    for index, atoms in enumerate(structures):
        started = time.monotonic()
        try:
            calculator = calculator_type(**settings.get("parameters", {}))
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
    except ValueError as error:
        print(f"tace-label: {error}", file=sys.stderr)
        return 2
    failed = sum(entry["status"] == "failed" for entry in report)
    print(f"labelled {len(report) - failed} of {len(report)} structures")
    return 0


if __name__ == "__main__":
    sys.exit(main())
