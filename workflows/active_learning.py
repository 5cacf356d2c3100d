"""``tace.active_learning``: label -> train an ensemble -> explore with MD -> select -> label ... until converged.

Exploration stages advance as in dpgen2: once the accurate fraction of a stage's frames reaches the
target for ``converged_iterations`` iterations in a row, the next stage (hotter, larger, under
pressure) begins; the run has converged when the last stage has. Every step is a process in the
provenance graph, so each training structure leads back to the labelling process that made it and
to the MD frame it was selected from. Labels come from an ASE calculator (``label_ase``) or from
Quantum ESPRESSO's pw.x (``label_qe``), both in eV, eV/Å and eV/Å^3.
"""

from __future__ import annotations

import numpy as np
from aiida import orm
from aiida.engine import ToContext, WorkChain, calcfunction, if_, while_

from tace_aiida.calculations.functions import merge_datasets, structures_to_dataset
from tace_aiida.calculations.label_ase import AseLabelCalculation
from tace_aiida.calculations.md import MDCalculation
from tace_aiida.calculations.selection import select_frames
from tace_aiida.calculations.train import TrainCalculation
from tace_aiida.data import PotentialData, TrainingSetData
from tace_aiida.selection import SelectionSettings, spearman_correlation

from .labelling.qe import QeLabelWorkChain
from .resubmission import submit_once
from .train import TrainBaseWorkChain

LABELLERS = {"label_ase": AseLabelCalculation, "label_qe": QeLabelWorkChain}

STOPPING_DEFAULTS = {
    "accurate_fraction": 0.9,
    "converged_iterations": 1,
    "max_iterations": 10,
    "max_label_failure_fraction": 0.2,
    "min_members": 2,
}
STAGE_DEFAULTS = {
    "name": None,
    "temperatures": [300.0],
    "pressure": None,
    "steps": 1000,
    "timestep": 1.0,
    "save_interval": 10,
    "runs": 1,
    "start_from": "initial",
    "max_starts": None,
    "max_force_std": None,
    "thermostat": "langevin",
}


def validate_stages(value: orm.List, _) -> str | None:
    stages = value.get_list()
    if not stages:
        return "exploration needs at least one stage"
    for index, stage in enumerate(stages):
        unknown = set(stage) - set(STAGE_DEFAULTS)
        if unknown:
            return f"exploration stage {index} has unknown settings {sorted(unknown)}; known are {sorted(STAGE_DEFAULTS)}"
        if stage.get("start_from", "initial") not in ("initial", "dataset"):
            return f"exploration stage {index}: start_from must be 'initial' or 'dataset', not {stage['start_from']!r}"
    return None


def validate_stopping(value: orm.Dict, _) -> str | None:
    unknown = set(value.get_dict()) - set(STOPPING_DEFAULTS)
    if unknown:
        return f"unknown stopping settings {sorted(unknown)}; known are {sorted(STOPPING_DEFAULTS)}"
    return None


def validate_selection(value: orm.Dict, _) -> str | None:
    try:
        SelectionSettings.from_dict(value.get_dict())
    except (TypeError, ValueError) as error:
        return f"invalid selection settings: {error}"
    return None


def validate_inputs(inputs: dict, _) -> str | None:
    """Initial data, exactly one labeller, and periodic initial structures for ``label_qe``."""
    if "structures" not in inputs and "dataset" not in inputs:
        return "give initial `structures`, an initial `dataset`, or both"
    given = [namespace for namespace in LABELLERS if namespace in inputs]
    if not given:
        return ("no labeller given: fill exactly one of `label_ase` (code, calculator, parameters) or "
                "`label_qe` (pw.x code, pseudo_family, protocol, overrides)")
    if len(given) > 1:
        return "both `label_ase` and `label_qe` were given: fill exactly one labeller namespace"
    molecules = sorted(label for label, structure in inputs.get("structures", {}).items() if not all(structure.pbc))
    if "label_qe" in inputs and molecules:
        return f"`label_qe` labels periodic cells only: structures {molecules} are not periodic in all three directions"
    return None


@calcfunction
def extract_structures(dataset: TrainingSetData, count: orm.Int) -> dict:
    """Up to ``count`` frames of ``dataset``, evenly spread, as StructureData (exploration starts)."""
    frames = dataset.get_atoms()
    picks = np.unique(np.linspace(0, len(frames) - 1, num=min(count.value, len(frames))).round().astype(int))
    return {f"frame_{i}": orm.StructureData(ase=frames[i]) for i in picks}


@calcfunction
def freeze_report(report: orm.Dict) -> orm.Dict:
    """The run's report as an output node of its own."""
    return orm.Dict(report.get_dict())


def calibration(labelled: TrainingSetData) -> dict:
    """Predicted max force deviation against the actual max force error of each new label (eV/Å)."""
    predicted, actual = [], []
    for atoms in labelled.get_atoms():
        if "predicted_forces" not in atoms.arrays:
            continue
        error = np.linalg.norm(atoms.arrays["predicted_forces"] - atoms.get_forces(), axis=1).max()
        predicted.append(float(atoms.info["predicted_max_force_std"]))
        actual.append(float(error))
    return {"predicted_max_force_std": predicted, "actual_max_force_error": actual,
            "spearman": spearman_correlation(np.array(predicted), np.array(actual))}


class ActiveLearningWorkChain(WorkChain):
    """Active learning of an ensemble of Cartesian-tensor potentials."""

    @classmethod
    def define(cls, spec):
        super().define(spec)
        spec.input_namespace("structures", valid_type=orm.StructureData, dynamic=True, required=False,
                             help="Initial structures: labelled first, and the starting points of exploration.")
        spec.input("dataset", valid_type=TrainingSetData, required=False,
                   help="An initial labelled training set, e.g. the `dataset` output of a previous run.")
        spec.input_namespace("initial_ensemble", valid_type=PotentialData, dynamic=True, required=False,
                             help="Potentials to warm-start the first training from (continuing a previous run).")
        spec.expose_inputs(AseLabelCalculation, namespace="label_ase", exclude=("structures",),
                           namespace_options={"required": False, "populate_defaults": False,
                                              "help": "Label with an ASE calculator (tace.label_ase)."})
        spec.expose_inputs(QeLabelWorkChain, namespace="label_qe", exclude=("structures",),
                           namespace_options={"required": False, "populate_defaults": False,
                                              "help": "Label with Quantum ESPRESSO's pw.x, one PwBaseWorkChain "
                                                      "per structure (tace.label_qe); periodic cells only."})
        spec.expose_inputs(TrainCalculation, namespace="train",
                           exclude=("dataset", "validation_dataset", "test_dataset", "seed", "parent_potential"),
                           namespace_options={"help": "Code, training parameters and options of every member."})
        spec.input("ensemble_size", valid_type=orm.Int, default=lambda: orm.Int(4),
                   help="Number of ensemble members, trained in parallel with different seeds.")
        spec.input("warm_start", valid_type=orm.Bool, default=lambda: orm.Bool(True),
                   help="Start each member's training from the same member of the previous iteration.")
        spec.expose_inputs(MDCalculation, namespace="md", exclude=("potentials", "structure", "parameters"),
                           namespace_options={"help": "Code and options of the exploration MD runs."})
        spec.input("exploration", valid_type=orm.List, validator=validate_stages,
                   help=f"Exploration stages, run in order; each a dict with keys {sorted(STAGE_DEFAULTS)} "
                        "(temperatures in K, pressure in GPa for NPT, timestep in fs).")
        spec.input("selection", valid_type=orm.Dict, default=lambda: orm.Dict({}), validator=validate_selection,
                   help="Trust window (trust_low, trust_high in eV/Å, relative), max_selected, diversity, families.")
        spec.input("stopping", valid_type=orm.Dict, default=lambda: orm.Dict({}), validator=validate_stopping,
                   help=f"Stopping and failure rules; defaults {STOPPING_DEFAULTS}.")
        spec.input("test_dataset", valid_type=TrainingSetData, required=False,
                   help="Labelled test structures: every member's errors on them go into the report.")
        spec.inputs.validator = validate_inputs
        spec.outline(
            cls.setup,
            if_(cls.has_initial_structures)(cls.label_initial, cls.collect_initial),
            cls.prepare_exploration_starts,
            while_(cls.should_iterate)(
                cls.train_ensemble,
                cls.inspect_ensemble,
                cls.explore,
                cls.inspect_exploration,
                cls.select,
                if_(cls.has_selection)(cls.label_selection, cls.merge_selection),
                cls.advance,
            ),
            cls.finalize,
        )
        spec.output_namespace("ensemble", valid_type=PotentialData, dynamic=True, help="The final ensemble.")
        spec.output("dataset", valid_type=TrainingSetData, help="The final training set, all labels merged.")
        spec.output("report", valid_type=orm.Dict, help="One entry per iteration: sizes, errors, fractions, times.")
        spec.exit_code(401, "ERROR_MAX_ITERATIONS", message="Not converged after the maximum number of iterations.")
        spec.exit_code(402, "ERROR_TOO_MANY_LABEL_FAILURES", message="Labelling failed for {fraction:.0%} of the structures.")
        spec.exit_code(403, "ERROR_ENSEMBLE_FAILED", message="Only {count} ensemble members trained; at least {minimum} are needed.")
        spec.exit_code(404, "ERROR_EXPLORATION_FAILED", message="Every exploration MD run failed.")
        spec.exit_code(405, "ERROR_NO_TRAINING_DATA", message="No structure of the initial set could be labelled.")

    # ---------------------------------------------------------------------------------- set-up

    def setup(self):
        self.ctx.stopping = {**STOPPING_DEFAULTS, **self.inputs.stopping.get_dict()}
        self.ctx.stages = [{**STAGE_DEFAULTS, **stage} for stage in self.inputs.exploration.get_list()]
        self.ctx.stage = 0
        self.ctx.converged_count = 0
        self.ctx.iteration = 0
        self.ctx.stop_reason = None
        self.ctx.iterations = []
        self.ctx.calibration = None
        self.ctx.label_failures = 0
        self.ctx.dataset = self.inputs.get("dataset")
        self.ctx.ensemble = list(self.inputs.get("initial_ensemble", {}).values())

    def has_initial_structures(self):
        return "structures" in self.inputs

    def _label(self, structures: TrainingSetData, link_label: str):
        """Submit the labeller that was given (``label_ase`` or ``label_qe``) on ``structures``."""
        namespace = next(namespace for namespace in LABELLERS if namespace in self.inputs)
        process = LABELLERS[namespace]
        return submit_once(self, process, link_label, **self.exposed_inputs(process, namespace), structures=structures)

    def label_initial(self):
        unlabelled = structures_to_dataset(**self.inputs.structures)
        self.report(f"labelling {unlabelled.num_structures} initial structures")
        return ToContext(initial_labels=self._label(unlabelled, "label_initial"))

    def collect_initial(self):
        node = self.ctx.initial_labels
        if "dataset" not in node.outputs:
            self.report(f"labelling the initial structures failed: {node.exit_message}")
            return self.exit_codes.ERROR_NO_TRAINING_DATA
        labelled = node.outputs.dataset
        self.ctx.dataset = merge_datasets(initial=self.ctx.dataset, labelled=labelled) if self.ctx.dataset else labelled
        return None

    def prepare_exploration_starts(self):
        if "structures" in self.inputs:
            self.ctx.starts = dict(self.inputs.structures)
        else:
            self.ctx.starts = extract_structures(self.ctx.dataset, orm.Int(4))

    # ----------------------------------------------------------------------------------- loop

    def should_iterate(self):
        return self.ctx.stop_reason is None

    def train_ensemble(self):
        self.ctx.iteration += 1
        if self.ctx.ensemble and self.ctx.get("trained_dataset") == self.ctx.dataset.uuid:
            self.report(f"iteration {self.ctx.iteration}: the dataset did not change; keeping the ensemble")
            return None
        self.ctx.trained_dataset = self.ctx.dataset.uuid
        inputs = self.exposed_inputs(TrainCalculation, "train")
        previous = self.ctx.ensemble if self.inputs.warm_start.value else []
        futures = {}
        for member in range(self.inputs.ensemble_size.value):
            member_inputs = {**inputs, "dataset": self.ctx.dataset, "seed": orm.Int(member + 1)}
            if "test_dataset" in self.inputs:
                member_inputs["test_dataset"] = self.inputs.test_dataset
            if member < len(previous):
                member_inputs["parent_potential"] = previous[member]
            label = f"iteration_{self.ctx.iteration:02d}_train_{member}"
            futures[label] = submit_once(self, TrainBaseWorkChain, label, train=member_inputs)
        self.ctx.trained_on = self.ctx.dataset.num_structures
        self.report(f"iteration {self.ctx.iteration}: training {len(futures)} members on "
                    f"{self.ctx.dataset.num_structures} structures")
        return ToContext(**futures)

    def _iteration_children(self, kind: str) -> list:
        prefix = f"iteration_{self.ctx.iteration:02d}_{kind}_"
        return [self.ctx[key] for key in sorted(self.ctx.keys()) if key.startswith(prefix)]

    def inspect_ensemble(self):
        children = self._iteration_children("train")
        if not children:
            return None
        trained = [node for node in children if node.is_finished_ok]
        minimum = min(self.ctx.stopping["min_members"], self.inputs.ensemble_size.value)
        if len(trained) < minimum:
            return self.exit_codes.ERROR_ENSEMBLE_FAILED.format(count=len(trained), minimum=minimum)
        self.ctx.ensemble = [node.outputs.potential for node in trained]
        self.ctx.training_metrics = [node.outputs.metrics.get_dict() for node in trained]
        return None

    def explore(self):
        stage = self.ctx.stages[self.ctx.stage]
        starts = self.ctx.starts if stage["start_from"] == "initial" else extract_structures(self.ctx.dataset, orm.Int(4))
        if stage["max_starts"] is not None:
            labels = sorted(starts)
            picks = np.unique(np.linspace(0, len(labels) - 1, num=min(stage["max_starts"], len(labels))).round().astype(int))
            starts = {labels[i]: starts[labels[i]] for i in picks}
        inputs = self.exposed_inputs(MDCalculation, "md")
        potentials = {f"member_{i}": p for i, p in enumerate(self.ctx.ensemble)}
        trust_high = SelectionSettings.from_dict(self.inputs.selection.get_dict()).window.trust_high
        threshold = stage["max_force_std"] or 2.0 * trust_high
        futures = {}
        for start_label in sorted(starts):
            for temperature in stage["temperatures"]:
                for run in range(stage["runs"]):
                    parameters = {
                        "ensemble": "npt" if stage["pressure"] is not None else "nvt",
                        "thermostat": stage["thermostat"], "temperature": float(temperature),
                        "pressure": float(stage["pressure"] or 0.0), "timestep": stage["timestep"],
                        "steps": stage["steps"], "save_interval": stage["save_interval"],
                        "max_force_std": threshold, "seed": 1000 * self.ctx.iteration + run,
                    }
                    label = f"iteration_{self.ctx.iteration:02d}_md_{len(futures):03d}"
                    run_inputs = {**inputs, "potentials": potentials, "structure": starts[start_label],
                                  "parameters": orm.Dict(parameters)}
                    futures[label] = submit_once(self, MDCalculation, label, **run_inputs)
        self.report(f"iteration {self.ctx.iteration}: stage {self.ctx.stage} ({stage['name'] or 'unnamed'}), "
                    f"{len(futures)} MD runs")
        return ToContext(**futures)

    def inspect_exploration(self):
        runs = self._iteration_children("md")
        blown_up = MDCalculation.exit_codes.ERROR_UNPHYSICAL.status
        finished = [node for node in runs if node.is_finished_ok or node.exit_status == blown_up]
        if not finished:
            return self.exit_codes.ERROR_EXPLORATION_FAILED
        self.ctx.trajectories = {f"run_{i:03d}": node.outputs.trajectory for i, node in enumerate(finished)}
        self.ctx.md_failures = len(runs) - len(finished)
        self.ctx.stop_reasons = [node.outputs.result["stop_reason"] for node in finished]
        return None

    def select(self):
        name = self.ctx.stages[self.ctx.stage]["name"]
        families = orm.Dict({label: name for label in self.ctx.trajectories}) if name else None
        outputs = select_frames(parameters=self.inputs.selection, families=families, **self.ctx.trajectories)
        self.ctx.selected = outputs["selected"]
        self.ctx.selection_report = outputs["report"].get_dict()
        report = self.ctx.selection_report
        self.report(f"iteration {self.ctx.iteration}: {report['accurate']} accurate, {report['candidate']} candidate, "
                    f"{report['failed']} failed frames; {report['selected']} selected")

    def has_selection(self):
        return self.ctx.selected.num_structures > 0

    def label_selection(self):
        return ToContext(new_labels=self._label(self.ctx.selected, f"iteration_{self.ctx.iteration:02d}_label"))

    def merge_selection(self):
        node = self.ctx.new_labels
        report = node.outputs.report.get_dict() if "report" in node.outputs else {"num_failed": self.ctx.selected.num_structures}
        fraction = report["num_failed"] / self.ctx.selected.num_structures
        self.ctx.label_failures = report["num_failed"]
        if fraction > self.ctx.stopping["max_label_failure_fraction"]:
            return self.exit_codes.ERROR_TOO_MANY_LABEL_FAILURES.format(fraction=fraction)
        labelled = node.outputs.dataset
        self.ctx.calibration = calibration(labelled)
        self.ctx.dataset = merge_datasets(previous=self.ctx.dataset, new=labelled)
        return None

    def advance(self):
        selection = self.ctx.selection_report
        self.ctx.iterations.append(self._iteration_entry())
        self.ctx.calibration = None
        self.ctx.label_failures = 0
        if selection["accurate_fraction"] >= self.ctx.stopping["accurate_fraction"]:
            self.ctx.converged_count += 1
        else:
            self.ctx.converged_count = 0
        if self.ctx.converged_count >= self.ctx.stopping["converged_iterations"]:
            if self.ctx.stage + 1 < len(self.ctx.stages):
                self.ctx.stage += 1
                self.ctx.converged_count = 0
                self.report(f"stage converged; moving on to stage {self.ctx.stage}")
            else:
                self.ctx.stop_reason = "converged"
        elif selection["candidate"] == 0:
            self.ctx.stop_reason = "no_candidates"
        if self.ctx.stop_reason is None and self.ctx.iteration >= self.ctx.stopping["max_iterations"]:
            self.ctx.stop_reason = "max_iterations"

    def _iteration_entry(self) -> dict:
        def mean(key: str, source: str = "best") -> float | None:
            values = [m.get(source, {}).get(key) for m in self.ctx.training_metrics]
            values = [v for v in values if v is not None]
            return float(np.mean(values)) if values else None

        steps = {"train": self._iteration_children("train"), "md": self._iteration_children("md")}
        seconds = {kind: max((n.mtime - n.ctime).total_seconds() for n in nodes) if nodes else 0.0
                   for kind, nodes in steps.items()}
        calibration_data = self.ctx.calibration or {}
        return {
            "iteration": self.ctx.iteration,
            "stage": self.ctx.stage,
            "dataset_size": self.ctx.trained_on,
            "dataset_size_after": self.ctx.dataset.num_structures,
            "members": len(self.ctx.ensemble),
            "valid_forces_rmse": mean("valid_forces_rmse"),
            "valid_energy_per_atom_rmse": mean("valid_energy_per_atom_rmse"),
            "test_forces_rmse": mean("forces_rmse", "test"),
            "test_energy_per_atom_rmse": mean("energy_per_atom_rmse", "test"),
            "frames": self.ctx.selection_report["frames"],
            "accurate_fraction": self.ctx.selection_report["accurate_fraction"],
            "candidate_fraction": self.ctx.selection_report["candidate_fraction"],
            "failed_fraction": self.ctx.selection_report["failed_fraction"],
            "selected": self.ctx.selection_report["selected"],
            "label_failures": self.ctx.label_failures,
            "md_failures": self.ctx.md_failures,
            "md_stop_reasons": self.ctx.stop_reasons,
            "calibration": calibration_data,
            "wall_seconds": seconds,
        }

    # ---------------------------------------------------------------------------------- results

    def finalize(self):
        for index, potential in enumerate(self.ctx.ensemble):
            self.out(f"ensemble.member_{index}", potential)
        self.out("dataset", self.ctx.dataset)
        self.out("report", freeze_report(orm.Dict({"stop_reason": self.ctx.stop_reason, "iterations": self.ctx.iterations})))
        self.report(f"finished after {self.ctx.iteration} iterations: {self.ctx.stop_reason}")
        if self.ctx.stop_reason == "max_iterations":
            return self.exit_codes.ERROR_MAX_ITERATIONS
        return None
