"""``tace.label_qe``: label periodic structures with Quantum ESPRESSO's pw.x through aiida-quantumespresso.

One ``PwBaseWorkChain`` (protocol inputs, restart handlers; as ``tace.pw_base``, which keeps its pw.x job across a
daemon crash) runs per structure, as an SCF with forces and stress, at most ``max_concurrent`` at a time (a rolling
window, :mod:`..window`: the next starts as soon as an earlier one has finished). The finished ones become frames of one
``dataset`` in a calcfunction whose inputs are their outputs, so each frame's provenance leads to its
``PwBaseWorkChain`` (also named by the frame's ``label_uuid``). The failed ones are listed in the
``report`` with their exit status and message and never become labels; the outputs are those of
``tace.label_ase``.

Units: energy in eV (pw.x's total energy, the free energy ``E - TS`` with smearing, which the forces
derive from), forces in eV/Å, stress in eV/Å^3 with ASE's sign (``(1/V) dE/dε``, negative under
compression). aiida-quantumespresso reports stress in GPa with pw.x's opposite sign, hence
``stress = -stress_GPa * ase.units.GPa``.
"""

from __future__ import annotations

import copy
from typing import Any

import numpy as np
from aiida import orm
from aiida.engine import WorkChain, calcfunction, while_
from aiida.plugins import GroupFactory
from ase import units
from ase.calculators.singlepoint import SinglePointCalculator
from ase.stress import full_3x3_to_voigt_6_stress
from tace_aiida.workflows.killing import ForcedKillReachesChildren
from tace_aiida.workflows.labelling.pw_base import CrashSafePwBaseWorkChain, PwBaseWorkChain
from tace_aiida.workflows.resubmission import ClosesInterruptedCalcfunctions, submit_once
from tace_aiida.workflows.window import fill_window, open_window, window_is_open

from tace_aiida.data import TrainingSetData
from tace_aiida.labelling.failures import describe_failures

PseudoPotentialFamily = GroupFactory("pseudo.family")

PW_PLUGIN = "quantumespresso.pw"
CONTROL = {"calculation": "scf", "tprnfor": True, "tstress": True}
EXPECTED_UNITS = {"energy_units": "eV", "forces_units": "ev / angstrom", "stress_units": "GPascal"}


def validate_structures(value: TrainingSetData, _) -> str | None:
    """Refuse empty sets and structures that are not periodic in all three directions."""
    frames = value.get_atoms()
    if not frames:
        return "the training set holds no structure"
    molecules = [index for index, atoms in enumerate(frames) if not atoms.pbc.all()]
    if molecules:
        return (f"structures {molecules} are not periodic in all three directions; Quantum ESPRESSO labels periodic "
                "cells only: label molecules with `tace.label_ase` (e.g. PySCF or tblite recipes)")
    return None


def validate_code(value: orm.AbstractCode, _) -> str | None:
    plugin = value.default_calc_job_plugin
    if plugin is not None and plugin != PW_PLUGIN:
        return f"code {value.full_label!r} is for the plugin {plugin!r}, not {PW_PLUGIN!r}"
    return None


def validate_protocol(value: orm.Str, _) -> str | None:
    try:
        PwBaseWorkChain.get_protocol_inputs(value.value)
    except ValueError:
        return (f"unknown protocol {value.value!r}; choose among {sorted(PwBaseWorkChain.get_available_protocols())} "
                "(or the aliases moderate, precise)")
    return None


def validate_pseudo_family(value: orm.Str, _) -> str | None:
    if not orm.QueryBuilder().append(PseudoPotentialFamily, filters={"label": value.value}).count():
        return (f"no pseudopotential family {value.value!r} is installed; install one with "
                "`tace_aiida.pseudos.ensure_pseudo_family` or `aiida-pseudo install`")
    return None


def validate_max_concurrent(value: orm.Int, _) -> str | None:
    return None if value.value >= 1 else f"max_concurrent must be >= 1, not {value.value}"


def validate_overrides(value: orm.Dict, _) -> str | None:
    """Refuse overrides that would stop the calculation from being an SCF with forces and stress."""
    control = value.get_dict().get("pw", {}).get("parameters", {}).get("CONTROL", {})
    clashes = {key: control[key] for key in CONTROL if key in control and control[key] != CONTROL[key]}
    if clashes:
        return f"overrides may not change {clashes}: labelling needs {CONTROL}"
    return None


@calcfunction
def split_structures(structures: TrainingSetData) -> dict[str, orm.StructureData]:
    """One ``StructureData`` per frame, as output ``structure_<index>``."""
    return {f"structure_{index}": orm.StructureData(ase=atoms) for index, atoms in enumerate(structures.get_atoms())}


def _frame_labels(parameters: orm.Dict, trajectory: orm.TrajectoryData) -> dict[str, Any]:
    """Energy (eV), forces (eV/Å) and ASE-convention stress (eV/Å^3) of a finished pw.x SCF."""
    for key, unit in EXPECTED_UNITS.items():
        if parameters.get(key, unit) != unit:
            raise ValueError(f"pw.x output {parameters.pk} reports {key}={parameters[key]!r}, expected {unit!r}")
    stress_gpa = np.asarray(trajectory.get_array("stress")[-1], dtype=float)
    return {
        "energy": float(parameters["energy"]),
        "forces": np.asarray(trajectory.get_array("forces")[-1], dtype=float),
        "stress": full_3x3_to_voigt_6_stress(-stress_gpa * units.GPa),
    }


@calcfunction
def collect_labels(structures: TrainingSetData, failures: orm.List, **outputs: orm.Data) -> dict[str, orm.Data]:
    """The labelled frames and the report of a ``tace.label_qe`` run.

    ``outputs`` holds ``parameters_<index>`` and ``trajectory_<index>`` of every finished PwBaseWorkChain;
    ``failures`` lists ``{index, error, exit_status}`` of the others.
    """
    frames = structures.get_atoms()
    indices = sorted(int(label.rpartition("_")[2]) for label in outputs if label.startswith("parameters_"))
    labelled, seconds = [], 0.0
    for index in indices:
        parameters, trajectory = outputs[f"parameters_{index}"], outputs[f"trajectory_{index}"]
        frame = frames[index]
        frame.calc = SinglePointCalculator(frame, **_frame_labels(parameters, trajectory))
        frame.info.update(input_index=index, label_uuid=trajectory.creator.caller.uuid)
        labelled.append(frame)
        seconds += float(parameters.get("wall_time_seconds", 0.0))
    failed = failures.get_list()
    results: dict[str, orm.Data] = {"report": orm.Dict({
        "num_structures": len(frames),
        "num_labelled": len(labelled),
        "num_failed": len(failed),
        "failures": failed,
        "seconds": seconds,
    })}
    if labelled:
        results["dataset"] = TrainingSetData(labelled)
    return results


def _describe_process(node: orm.ProcessNode) -> str:
    """``Class<pk> exit status N: message`` (or the process state when it did not finish)."""
    state = f"exit status {node.exit_status}" if node.is_finished else f"state {node.process_state.value}"
    text = f"{node.process_label}<{node.pk}> {state}"
    return f"{text}: {node.exit_message}" if node.exit_message else text


def _describe_failure(node: orm.WorkflowNode) -> str:
    """Why a PwBaseWorkChain gave no labels, with its last PwCalculation's own exit status and message."""
    if node.is_finished_ok:
        return f"{node.process_label}<{node.pk}> finished without forces or stress in its outputs"
    calculations = sorted((child for child in node.called if isinstance(child, orm.CalcJobNode)), key=lambda c: c.ctime)
    text = _describe_process(node)
    return f"{text.rstrip('.')}; last {_describe_process(calculations[-1])}" if calculations else text


class QeLabelWorkChain(ForcedKillReachesChildren, ClosesInterruptedCalcfunctions, WorkChain):
    """Label every structure of a training set with pw.x (one ``PwBaseWorkChain`` each); failures per structure."""

    @classmethod
    def define(cls, spec):
        super().define(spec)
        spec.input("structures", valid_type=TrainingSetData, validator=validate_structures,
                   help="The periodic structures to label; labels present are replaced.")
        spec.input("code", valid_type=orm.AbstractCode, validator=validate_code,
                   help="The pw.x code (plugin `quantumespresso.pw`).")
        spec.input("pseudo_family", valid_type=orm.Str, required=False, validator=validate_pseudo_family,
                   help="Label of an installed aiida-pseudo family. Default: the protocol's family.")
        spec.input("protocol", valid_type=orm.Str, default=lambda: orm.Str("balanced"), validator=validate_protocol,
                   help="aiida-quantumespresso protocol of the PwBaseWorkChain: fast, balanced (alias moderate) or "
                        "stringent (alias precise).")
        spec.input("overrides", valid_type=orm.Dict, required=False, validator=validate_overrides,
                   help="Overrides of the protocol inputs, nested like the PwBaseWorkChain inputs, e.g. "
                        "`{'pw': {'parameters': {'SYSTEM': {'ecutwfc': 30.0, 'ecutrho': 120.0}}}, "
                        "'max_iterations': 3}`.")
        spec.input("kpoints_distance", valid_type=orm.Float, required=False,
                   help="Largest spacing between k-points in 1/Å. Default: the protocol's.")
        spec.input("options", valid_type=orm.Dict, required=False,
                   help="`metadata.options` of every PwCalculation (resources, max_wallclock_seconds, withmpi ...).")
        spec.input("max_concurrent", valid_type=orm.Int, default=lambda: orm.Int(20), validator=validate_max_concurrent,
                   help="At most this many PwBaseWorkChains alive at once; the next starts as soon as one has finished.")
        spec.outline(
            cls.setup,
            while_(cls.has_structures_to_label)(cls.launch_structures),
            cls.collect_results,
        )
        spec.output("dataset", valid_type=TrainingSetData, required=False,
                    help="The structures that were labelled (eV, eV/Å, eV/Å^3); each frame's info has `input_index` "
                         "and `label_uuid` (its PwBaseWorkChain).")
        spec.output("report", valid_type=orm.Dict,
                    help="Counts, and the index, error and exit status of every failed structure.")
        spec.exit_code(302, "ERROR_INVALID_SETTINGS",
                       message="The PwBaseWorkChain inputs could not be built: {message}")
        spec.exit_code(310, "ERROR_ALL_STRUCTURES_FAILED", message="No structure could be labelled: {reason}")

    @classmethod
    def get_builder_from_protocol(
        cls,
        code: orm.AbstractCode,
        structures: TrainingSetData,
        protocol: str = "balanced",
        pseudo_family: str | orm.Group | None = None,
        overrides: dict | None = None,
        kpoints_distance: float | None = None,
        options: dict | None = None,
    ):
        """A builder for ``structures``; ``pseudo_family`` is a family label or the family itself."""
        builder = cls.get_builder()
        builder.structures = structures
        builder.code = code
        builder.protocol = orm.Str(protocol)
        if pseudo_family is not None:
            builder.pseudo_family = orm.Str(pseudo_family if isinstance(pseudo_family, str) else pseudo_family.label)
        if overrides:
            builder.overrides = orm.Dict(overrides)
        if kpoints_distance is not None:
            builder.kpoints_distance = orm.Float(kpoints_distance)
        if options:
            builder.options = orm.Dict(options)
        return builder

    def _protocol_overrides(self) -> dict:
        """The overrides passed to ``PwBaseWorkChain.get_builder_from_protocol``."""
        overrides = copy.deepcopy(self.inputs.overrides.get_dict()) if "overrides" in self.inputs else {}
        control = overrides.setdefault("pw", {}).setdefault("parameters", {}).setdefault("CONTROL", {})
        control.update(CONTROL)
        if "pseudo_family" in self.inputs:
            overrides["pseudo_family"] = self.inputs.pseudo_family.value
        if "kpoints_distance" in self.inputs:
            overrides["kpoints_distance"] = self.inputs.kpoints_distance.value
        return overrides

    def _builder(self, structure: orm.StructureData, overrides: dict):
        """The PwBaseWorkChain builder of one structure from the protocol; ValueError for settings it refuses."""
        options = self.inputs.options.get_dict() if "options" in self.inputs else None
        try:
            return CrashSafePwBaseWorkChain.get_builder_from_protocol(
                self.inputs.code, structure, protocol=self.inputs.protocol.value,
                overrides=copy.deepcopy(overrides), options=options,
            )
        except (ValueError, NotImplementedError) as error:
            raise ValueError(str(error)) from error

    def setup(self):
        """One StructureData per frame; the first structure's builder is made here, so bad settings stop the run
        before any job starts."""
        self.ctx.structures = split_structures(self.inputs.structures, metadata={"call_link_label": "split_structures"})
        open_window(self, "pw")
        try:
            self._builder(self.ctx.structures["structure_0"], self._protocol_overrides())
        except ValueError as error:
            return self.exit_codes.ERROR_INVALID_SETTINGS.format(message=f"structure 0: {error}")
        return None

    def has_structures_to_label(self) -> bool:
        """Whether PwBaseWorkChains are left to launch or still running."""
        return window_is_open(self, "pw", self.inputs.structures.num_structures)

    def launch_structures(self):
        """Top the PwBaseWorkChains alive up to ``max_concurrent`` and wait for the oldest one."""
        total = self.inputs.structures.num_structures
        overrides = self._protocol_overrides()

        def launch(index: int) -> orm.ProcessNode:
            try:
                builder = self._builder(self.ctx.structures[f"structure_{index}"], overrides)
            except ValueError as error:
                raise ValueError(f"structure {index}: {error}") from error
            return submit_once(self, builder, f"pw_{index}")

        try:
            launched, wait = fill_window(self, "pw", [f"pw_{index}" for index in range(total)],
                                         self.inputs.max_concurrent.value, launch)
        except ValueError as error:
            return self.exit_codes.ERROR_INVALID_SETTINGS.format(message=str(error))
        if launched:
            self.report(f"launched PwBaseWorkChains for structures {launched.start} to {launched.stop - 1} of {total}")
        return wait

    def collect_results(self):
        """Turn the finished PwBaseWorkChains into frames; list the failed ones in the report."""
        outputs, failures = {}, []
        for index in range(self.inputs.structures.num_structures):
            node = self.ctx[f"pw_{index}"]
            if node.is_finished_ok and {"output_parameters", "output_trajectory"} <= set(node.outputs):
                outputs[f"parameters_{index}"] = node.outputs.output_parameters
                outputs[f"trajectory_{index}"] = node.outputs.output_trajectory
                continue
            error = _describe_failure(node)
            failures.append({"index": index, "error": error, "exit_status": node.exit_status})
            self.report(f"structure {index}: {error}")
        results = collect_labels(self.inputs.structures, orm.List(failures), **outputs,
                                 metadata={"call_link_label": "collect_labels"})
        self.out("report", results["report"])
        if "dataset" not in results:
            reason = describe_failures(results["report"]["failures"])
            return self.exit_codes.ERROR_ALL_STRUCTURES_FAILED.format(reason=reason)
        self.out("dataset", results["dataset"])
        return None
