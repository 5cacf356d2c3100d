"""``tace.label_ase``: label structures with any ASE calculator (EMT, xtb/tblite, PySCF, CP2K ...)."""

from __future__ import annotations

import json

from aiida import orm
from aiida.common.datastructures import CalcInfo
from aiida.common.folders import Folder

from tace_aiida.calculations.base import TaceCalcJob, single_code_calcinfo
from tace_aiida.data import TrainingSetData
from tace_aiida.labelling import runner


def validate_calculator(value: orm.Str, _) -> str | None:
    if "." not in value.value.replace(":", "."):
        return f"calculator must be an import path such as 'ase.calculators.emt.EMT', not {value.value!r}"
    return None


def validate_properties(value: orm.List, _) -> str | None:
    known = runner.PROPERTIES + runner.OPTIONAL_PROPERTIES
    unknown = sorted(set(value.get_list()) - set(known))
    if unknown or not value.get_list():
        return f"properties must be a non-empty list of {list(known)}, not {value.get_list()}"
    return None


def validate_condition_parameters(value: orm.Dict, _) -> str | None:
    wrong = {keyword: name for keyword, name in value.get_dict().items() if name not in runner.CONDITION_VALUES}
    if wrong:
        return f"condition_parameters maps keywords to {list(runner.CONDITION_VALUES)}; not to {wrong}"
    return None


class AseLabelCalculation(TaceCalcJob):
    """Run ``tace-label``: energies, forces and stress of every structure, failures per structure."""

    @classmethod
    def define(cls, spec):
        super().define(spec)
        spec.input("structures", valid_type=TrainingSetData, help="The structures to label; labels present are replaced.")
        spec.input("calculator", valid_type=orm.Str, validator=validate_calculator,
                   help="Import path of the ASE calculator class, e.g. `ase.calculators.emt.EMT`.")
        spec.input("parameters", valid_type=orm.Dict, required=False,
                   help="Keyword arguments of the calculator class (JSON-serialisable).")
        spec.input("properties", valid_type=orm.List, required=False, validator=validate_properties,
                   help="Labels to compute among energy, forces, stress (stress only for fully periodic cells), "
                        "dipole and polarizability (molecules only), born_effective_charges (per atom, into the frame's "
                        "arrays). Default: energy, forces, stress.")
        spec.input("condition_parameters", valid_type=orm.Dict, required=False, validator=validate_condition_parameters,
                   help="Calculator keyword -> condition of each structure (charge, multiplicity, unpaired_electrons, "
                        "electric_field), so every structure is labelled at the charge, spin and field in its info; "
                        "e.g. {'charge': 'charge', 'multiplicity': 'multiplicity'} for tblite.")
        spec.inputs["metadata"]["options"]["parser_name"].default = "tace.label_ase"
        spec.output("dataset", valid_type=TrainingSetData, required=False,
                    help="The structures that were labelled (eV, eV/Å, eV/Å^3); each frame's info has `input_index` "
                         "and `label_uuid`.")
        spec.output("report", valid_type=orm.Dict, help="Counts, and the index and error of every failed structure.")
        spec.exit_code(310, "ERROR_ALL_STRUCTURES_FAILED", message="No structure could be labelled: {reason}")

    def prepare_for_submission(self, folder: Folder) -> CalcInfo:
        settings = {
            "calculator": self.inputs.calculator.value,
            "parameters": self.inputs.parameters.get_dict() if "parameters" in self.inputs else {},
            "properties": self.inputs.properties.get_list() if "properties" in self.inputs else list(runner.PROPERTIES),
        }
        if "condition_parameters" in self.inputs:
            settings["condition_parameters"] = self.inputs.condition_parameters.get_dict()
        with folder.open(runner.SETTINGS, "w") as handle:
            json.dump(settings, handle, indent=1)
        self.inputs.structures.write_extxyz(folder.get_abs_path(runner.STRUCTURES))
        return single_code_calcinfo(
            self.inputs.code.uuid, "tace-label.out", "tace-label.err", [runner.LABELLED, runner.REPORT]
        )
