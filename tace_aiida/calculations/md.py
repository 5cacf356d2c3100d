"""``tace.md``: exploration MD with an ensemble of potentials (``tace-md``), recording its uncertainty."""

from __future__ import annotations

import json

from aiida import orm
from aiida.common.datastructures import CalcInfo
from aiida.common.folders import Folder

from tace_aiida.calculations.base import TaceCalcJob, single_code_calcinfo
from tace_aiida.data import PotentialData
from tace_aiida.model import md
from tace_aiida.model.structure_conditions import condition_info

MANAGED_SETTINGS = {"checkpoints"}


def validate_parameters(value: orm.Dict, _) -> str | None:
    settings = value.get_dict()
    if MANAGED_SETTINGS & set(settings):
        return "parameters must not set `checkpoints`: they come from the `potentials` inputs"
    try:
        md.MDSettings.from_dict(settings)
    except (ValueError, TypeError) as error:
        return f"invalid MD parameters: {error}"
    return None


def validate_conditions(value: orm.Dict, _) -> str | None:
    try:
        condition_info(value.get_dict())
    except (ValueError, TypeError) as error:
        return f"invalid conditions: {error}"
    return None


def validate_potentials(value: dict, _) -> str | None:
    if not value:
        return "at least one potential is needed"
    elements = {tuple(sorted(p.elements)) for p in value.values()}
    if len(elements) > 1:
        return f"the potentials know different elements: {sorted(elements)}"
    return None


class MDCalculation(TaceCalcJob):
    """Run MD with the mean forces of an ensemble; stop when it becomes too uncertain or unphysical."""

    @classmethod
    def define(cls, spec):
        super().define(spec)
        spec.input_namespace("potentials", valid_type=PotentialData, dynamic=True, validator=validate_potentials,
                             help="The ensemble members (at least one; the deviation needs two or more).")
        spec.input("structure", valid_type=orm.StructureData, help="The starting structure.")
        spec.input("conditions", valid_type=orm.Dict, required=False, validator=validate_conditions,
                   help="The structure's conditions as model inputs: charge (e), spin (multiplicity 2S+1), fidelity "
                        "(level of theory), electric_field (3 values, V/Å); neutral where absent. The trajectory "
                        "records them per frame.")
        spec.input("parameters", valid_type=orm.Dict, validator=validate_parameters,
                   help="MD settings of `tace-md`: ensemble (nve/nvt/npt), thermostat, temperature (K), pressure (GPa), "
                        "timestep (fs), steps, save_interval, max_force_std (eV/Å stop threshold), seed, device.")
        spec.inputs["metadata"]["options"]["parser_name"].default = "tace.md"
        spec.output("trajectory", valid_type=orm.TrajectoryData,
                    help="Saved frames: positions and cells, and arrays energies, forces, energy_std, forces_std, "
                         "max_force_std, descriptors, temperatures (eV, eV/Å, K), and the conditions charge, spin, "
                         "fidelity, electric_field.")
        spec.output("result", valid_type=orm.Dict, help="Why the run stopped (completed, uncertainty, unphysical), steps done.")
        spec.exit_code(410, "ERROR_UNPHYSICAL", message="The MD blew up after {steps} steps (atoms too close or a "
                       "non-finite energy); the frames before it are in the outputs.")

    def prepare_for_submission(self, folder: Folder) -> CalcInfo:
        checkpoints = []
        for index, label in enumerate(sorted(self.inputs.potentials)):
            name = f"member{index}.pt"
            self.inputs.potentials[label].write_checkpoint(folder.get_abs_path(name))
            checkpoints.append(name)
        settings = {**self.inputs.parameters.get_dict(), "checkpoints": checkpoints}
        with folder.open(md.SETTINGS, "w") as handle:
            json.dump(settings, handle, indent=1)
        atoms = self.inputs.structure.get_ase()
        if "conditions" in self.inputs:
            atoms.info.update(condition_info(self.inputs.conditions.get_dict()))
        atoms.write(folder.get_abs_path(md.STRUCTURE), format="extxyz")
        return single_code_calcinfo(self.inputs.code.uuid, "tace-md.out", "tace-md.err", [md.TRAJECTORY, md.RESULT])
