"""``tace.active_learning``: label -> train an ensemble -> explore with MD -> select -> label ... until converged.

Every step is a process in the provenance graph, so each training structure leads back to the
labelling process that made it and to the MD frame it was selected from. Labels come from an ASE
calculator (``label_ase``) or from Quantum ESPRESSO's pw.x (``label_qe``), both in eV, eV/Å and
eV/Å^3. :meth:`ActiveLearningWorkChain.get_builder_from_protocol` fills a builder from the protocols in
``protocols/active_learning.yaml``. The settings are read by :mod:`.settings`, the MD runs planned by
:mod:`.exploration` (at most ``md.max_concurrent`` alive at once), the decisions after each iteration
are made by :mod:`.decisions`, the report is written by :mod:`.report`; the context holds plain values and
nodes only, so a run continues from any checkpoint after a daemon restart, and :func:`.submit_once`
keeps a restarted step from launching its children twice.
"""

from __future__ import annotations

from collections.abc import Mapping
from importlib.resources import files
from importlib.resources.abc import Traversable

import numpy as np
from aiida import orm
from aiida.engine import ExitCode, ProcessBuilder, ToContext, WorkChain, calcfunction, if_, while_
from aiida_quantumespresso.workflows.protocols.utils import ProtocolMixin
from ase import Atoms
from pymatgen.core import Structure
from tace_aiida.model.config import TrainingConfig
from tace_aiida.model.structure_conditions import condition_info, condition_info_of

from tace_aiida.calculations.functions import merge_datasets, structures_to_dataset
from tace_aiida.calculations.md import MDCalculation
from tace_aiida.calculations.selection import select_frames
from tace_aiida.calculations.train import TrainCalculation
from tace_aiida.data import PotentialData, TrainingSetData
from tace_aiida.labelling.failures import describe_failures
from tace_aiida.labelling.runner import CARRIED_BY
from tace_aiida.selection import SelectionSettings
from tace_aiida.site_symmetry import forces_vanish_by_symmetry

from .decisions import (
    MAX_ITERATIONS,
    NO_CANDIDATES,
    advance,
    label_failure_fraction,
    over_failure_budget,
    required_members,
)
from .exploration import md_parameters, plan_md_runs, stop_threshold
from .generation import generate_variants, validate_transformations
from .killing import ForcedKillReachesChildren
from .labelling.ase_batches import AseLabelBatchesWorkChain
from .labelling.qe import QeLabelWorkChain
from .protocol_builder import check_codes, choose_labeller, structure_nodes, to_nodes
from .report import calibration, iteration_entry
from .resubmission import ClosesInterruptedCalcfunctions, submit_once
from .settings import StageSettings, StoppingSettings, read_stages
from .train import TrainBaseWorkChain
from .window import fill_window, open_window, window_is_open

LABELLERS = {"label_ase": AseLabelBatchesWorkChain, "label_qe": QeLabelWorkChain}


def validate_stages(value: orm.List, _) -> str | None:
    try:
        read_stages(value.get_list())
    except (TypeError, ValueError) as error:
        return str(error)
    return None


def validate_stopping(value: orm.Dict, _) -> str | None:
    try:
        StoppingSettings.from_dict(value.get_dict(), owner="stopping")
    except (TypeError, ValueError) as error:
        return str(error)
    return None


def validate_selection(value: orm.Dict, _) -> str | None:
    try:
        SelectionSettings.from_dict(value.get_dict())
    except (TypeError, ValueError) as error:
        return f"invalid selection settings: {error}"
    return None


def at_least_one(name: str):
    """A port validator refusing integers below 1, naming the port ``name`` and the value."""
    def validate(value: orm.Int, _) -> str | None:
        return None if value.value >= 1 else f"{name} must be >= 1, not {value.value}"
    return validate


#: Names that :func:`structures_to_dataset` takes as inputs of its own, so no structure label may use them.
RESERVED_LABELS = {"conditions", "metadata"}


def validate_inputs(inputs: dict, _) -> str | None:
    """Initial data that is not empty, exactly one labeller, periodic initial structures for ``label_qe``, and an
    uncertainty that one member can give when ``ensemble_size`` is 1."""
    if "structures" not in inputs and "dataset" not in inputs:
        return "give initial `structures`, an initial `dataset`, or both"
    if "structures" in inputs and not inputs["structures"]:
        return "the `structures` namespace is empty: give at least one structure, or leave it out and give a `dataset`"
    reserved = sorted(set(inputs.get("structures", {})) & RESERVED_LABELS)
    if reserved:
        return f"structure labels {reserved} are reserved (inputs of the step that gathers them): rename those structures"
    if "dataset" in inputs and inputs["dataset"].num_structures == 0:
        return f"the initial `dataset` {inputs['dataset'].pk or ''} holds no structure"
    given = [namespace for namespace in LABELLERS if namespace in inputs]
    if not given:
        return ("no labeller given: fill exactly one of `label_ase` (code, calculator, parameters) or "
                "`label_qe` (pw.x code, pseudo_family, protocol, overrides)")
    if len(given) > 1:
        return "both `label_ase` and `label_qe` were given: fill exactly one labeller namespace"
    molecules = sorted(label for label, structure in inputs.get("structures", {}).items() if not all(structure.pbc))
    if "label_qe" in inputs and molecules:
        return f"`label_qe` labels periodic cells only: structures {molecules} are not periodic in all three directions"
    for problem in (single_atom_problem(inputs), transformations_problem(inputs), symmetric_start_problem(inputs)):
        if problem:
            return problem
    problem = scored_elements_problem(inputs)
    if problem:
        return problem
    if "conditions" in inputs:
        problem = conditions_problem(inputs)
        if problem:
            return problem
    return uncertainty_problem(inputs.get("ensemble_size"), inputs.get("selection"))


def single_atom_problem(inputs: dict) -> str | None:
    """Why MD from the initial structures would explore nothing, or None: each has a single atom, which MD at fixed
    cell cannot move (the centre of mass is held), and a stage explores from them without a barostat."""
    structures = inputs.get("structures", {})
    if not structures or any(len(structure.sites) > 1 for structure in structures.values()):
        return None
    stages = inputs["exploration"].get_list() if "exploration" in inputs else []
    if not any(stage.get("start_from", "initial") == "initial" and stage.get("pressure") is None for stage in stages):
        return None
    return (f"every initial structure has a single atom ({sorted(structures)}): MD from it explores nothing, as the "
            "centre of mass is held; give supercells (e.g. ase's `atoms.repeat((2, 2, 2))`), or explore from the "
            "dataset (stages with `start_from: dataset`)")


def scored_elements_problem(inputs: dict) -> str | None:
    """Why the members cannot be scored on the ``test_dataset``, or None: it holds an element that neither the
    structures nor the dataset have (exploration adds none, so the members would never be trained on it)."""
    if "test_dataset" not in inputs:
        return None
    known = {symbol for structure in inputs.get("structures", {}).values() for symbol in structure.get_symbols_set()}
    if "dataset" in inputs:
        known |= set(inputs["dataset"].elements)
    unknown = sorted(set(inputs["test_dataset"].elements) - known)
    if unknown:
        return (f"the test_dataset holds {unknown}, which no initial structure or dataset frame has ({sorted(known)}): "
                "the members could not be scored on it")
    return None


def transformations_problem(inputs: dict) -> str | None:
    """Why the ``transformations`` cannot be applied, or None: they need ``structures``, and their variants would
    lose the structures' ``conditions``."""
    if "transformations" not in inputs:
        return None
    if not inputs.get("structures"):
        return "`transformations` apply to the initial `structures`, and none were given"
    if "conditions" in inputs:
        return "`transformations` and `conditions` together are not supported: the variants would be labelled neutral"
    return None


def symmetric_start_problem(inputs: dict) -> str | None:
    """Why the initial labels would hold no force, or None: every initial structure is a crystal whose every atom
    sits where symmetry forbids a force (:mod:`tace_aiida.site_symmetry`), and the initial dataset, if given, holds
    only structures whose forces vanish (a strained ideal crystal's, say)."""
    structures = inputs.get("structures", {})
    dataset = inputs.get("dataset")
    if "transformations" in inputs or not (structures or dataset):
        return None
    if dataset is not None and not all_forces_vanish(dataset):
        return None
    if not all(forces_vanish_by_symmetry(structure.get_ase()) for structure in structures.values()):
        return None
    rattle = ("input `transformations`, e.g. [{type: rattle, amplitudes: [0.05], copies: 3, keep_parents: true}]; "
              "`tace-aiida learn --rattle 0.05`")
    if dataset is None:
        return (f"every initial structure ({sorted(structures)}) has each atom on a site where its symmetry forbids a "
                "force: their labels would all have zero forces, the members would agree that forces vanish everywhere, "
                f"and the run would converge having learnt none. Label rattled copies with them ({rattle}), or start "
                "from a labelled `dataset`")
    given = f" and every initial structure ({sorted(structures)}) has each atom on such a site" if structures else ""
    return (f"the forces of all {dataset.label_counts['forces']} structures of the initial `dataset` {dataset.pk or ''} "
            f"vanish (ideal crystals, say){given}: the members would agree that forces vanish everywhere, and the run "
            "would converge having learnt none. Give a dataset of displaced structures (`tace-aiida generate` with a "
            f"rattle step), or initial `structures` labelled with rattled copies ({rattle})")


def all_forces_vanish(dataset: TrainingSetData) -> bool:
    """Whether every structure of ``dataset`` with forces has none (False when it has no forces, or was stored before
    they were counted)."""
    with_forces, free = dataset.label_counts["forces"], dataset.num_force_free
    return free is not None and with_forces > 0 and free == with_forces


def first_label_failure(node: orm.ProcessNode) -> str:
    """The first structure's error in the ``report`` of a labelling process that labelled nothing (its exit message
    when it has no report), and how many more failed."""
    failures = node.outputs.report.get_dict().get("failures", []) if "report" in node.outputs else []
    if not failures:
        return node.exit_message or f"{node.process_label}<{node.pk}> {node.process_state.value}"
    return describe_failures(failures, f"the `report` of {node.process_label}<{node.pk}>")


def conditions_problem(inputs: dict) -> str | None:
    """Why the ``conditions`` cannot be honoured, or None: they name given structures, the labeller receives
    every charge, spin and field that is not neutral, and the model embeds every condition that varies."""
    given = inputs["conditions"].get_dict()
    unknown = sorted(set(given) - set(inputs.get("structures", {})))
    if unknown:
        return f"`conditions` name structures {unknown} that are not in `structures` ({sorted(inputs.get('structures', {}))})"
    values = {label: condition_info(entry) for label, entry in given.items()}
    mapping = inputs["label_ase"]["condition_parameters"].get_dict() if "condition_parameters" in inputs.get(
        "label_ase", {}) else {}
    neutral = condition_info({})
    for name in CARRIED_BY:
        charged = sorted(label for label, entry in values.items() if entry[name] != neutral[name])
        if charged and not CARRIED_BY[name] & set(mapping.values()):
            labeller = "`label_qe`" if "label_qe" in inputs else "`label_ase.condition_parameters`"
            return (f"structures {charged} have a {name} that is not neutral, but {labeller} passes no {name} to the "
                    "labeller, which would label them as neutral")
    model = inputs["train"]["parameters"].get_dict().get("model", {}) if "parameters" in inputs.get("train", {}) else {}
    embeds = {"charge": model.get("embed_charge", False), "spin": model.get("embed_spin", False),
              "fidelity": model.get("num_fidelities", 0) > 1, "electric_field": model.get("embed_field", False)}
    for name, embedded in embeds.items():
        distinct = {str(entry[name]) for entry in values.values()} | ({str(neutral[name])} if set(
            inputs.get("structures", {})) - set(values) else set())
        if len(distinct) > 1 and not embedded:
            key = {"fidelity": "num_fidelities"}.get(name, f"embed_{name.replace('electric_', '')}")
            return (f"the structures differ in {name} ({sorted(distinct)}), but the model does not embed it: set "
                    f"`train.parameters.model.{key}`")
    return None


def uncertainty_problem(ensemble_size: orm.Int | None, selection: orm.Dict | None) -> str | None:
    """Why one member cannot give the selection's uncertainty, or None: an ensemble of one has no spread."""
    source = selection.get_dict().get("uncertainty", "ensemble") if selection is not None else "ensemble"
    if ensemble_size is not None and ensemble_size.value < 2 and source == "ensemble":
        return (f"ensemble_size {ensemble_size.value} with selection uncertainty 'ensemble': one member has no spread "
                "to select by; train at least 2 members, or set selection `uncertainty: features`")
    return None


@calcfunction
def extract_structures(dataset: TrainingSetData, count: orm.Int) -> dict:
    """Up to ``count`` frames of ``dataset``, evenly spread, as StructureData ``frame_<i>`` (exploration starts),
    and their ``conditions`` ({frame_<i>: {charge, spin, fidelity, electric_field}}, from each frame's info)."""
    frames = dataset.get_atoms()
    picks = np.unique(np.linspace(0, len(frames) - 1, num=min(count.value, len(frames))).round().astype(int))
    outputs: dict[str, orm.Data] = {f"frame_{i}": orm.StructureData(ase=frames[i]) for i in picks}
    outputs["conditions"] = orm.Dict({f"frame_{i}": condition_info_of(frames[i]) for i in picks})
    return outputs


def exploration_starts(extracted: dict) -> tuple[dict[str, orm.StructureData], dict[str, dict]]:
    """The starting structures and their conditions from the outputs of :func:`extract_structures`."""
    starts = {label: node for label, node in extracted.items() if label.startswith("frame_")}
    return starts, extracted["conditions"].get_dict()


def validate_conditions(value: orm.Dict, _) -> str | None:
    for label, values in value.get_dict().items():
        try:
            condition_info(values)
        except (TypeError, ValueError) as error:
            return f"conditions of structure {label!r}: {error}"
    return None


@calcfunction
def freeze_report(report: orm.Dict) -> orm.Dict:
    """The run's report as an output node of its own."""
    return orm.Dict(report.get_dict())


class ActiveLearningWorkChain(ForcedKillReachesChildren, ClosesInterruptedCalcfunctions, ProtocolMixin, WorkChain):
    """Active learning of an ensemble of Cartesian-tensor potentials."""

    @classmethod
    def define(cls, spec):
        super().define(spec)
        spec.input_namespace("structures", valid_type=orm.StructureData, dynamic=True, required=False,
                             help="Initial structures: labelled first, and the starting points of exploration.")
        spec.input("conditions", valid_type=orm.Dict, required=False, validator=validate_conditions,
                   help="Conditions of the initial structures, {label: {charge (e), spin (multiplicity 2S+1), fidelity, "
                        "electric_field (V/Å)}}, neutral where absent: every frame explored from a structure, and "
                        "its labels, keep them (frames of the `dataset` keep those in their info).")
        spec.input("transformations", valid_type=orm.List, required=False, validator=validate_transformations,
                   help="Transformations of the initial structures, as `tace.generate_dataset`'s (supercell, strain, "
                        "rattle, ...): their variants are labelled instead of the structures (with `keep_parents`, "
                        "beside them); exploration still starts from the structures. Ideal crystals need rattled "
                        "copies: their forces vanish by symmetry.")
        spec.input("transformation_seed", valid_type=orm.Int, default=lambda: orm.Int(0),
                   help="Seed of the transformations' random choices (rattle displacements, vacancy sites, ...).")
        spec.input("dataset", valid_type=TrainingSetData, required=False,
                   help="An initial labelled training set, e.g. the `dataset` output of a previous run.")
        spec.input_namespace("initial_ensemble", valid_type=PotentialData, dynamic=True, required=False,
                             help="Potentials to warm-start the first training from (continuing a previous run).")
        spec.expose_inputs(AseLabelBatchesWorkChain, namespace="label_ase", exclude=("structures",),
                           namespace_options={"required": False, "populate_defaults": False,
                                              "help": "Label with an ASE calculator: tace.label_ase jobs of "
                                                      "`structures_per_job`, at most `max_concurrent` at once."})
        spec.expose_inputs(QeLabelWorkChain, namespace="label_qe", exclude=("structures",),
                           namespace_options={"required": False, "populate_defaults": False,
                                              "help": "Label with Quantum ESPRESSO's pw.x, one PwBaseWorkChain "
                                                      "per structure (tace.label_qe); periodic cells only."})
        spec.expose_inputs(TrainCalculation, namespace="train",
                           exclude=("dataset", "validation_dataset", "test_dataset", "seed", "parent_potential"),
                           namespace_options={"help": "Code, training parameters and options of every member."})
        spec.input("ensemble_size", valid_type=orm.Int, default=lambda: orm.Int(4), validator=at_least_one("ensemble_size"),
                   help="Number of ensemble members, trained in parallel with different seeds.")
        spec.input("warm_start", valid_type=orm.Bool, default=lambda: orm.Bool(True),
                   help="Start each member's training from the same member of the previous iteration.")
        spec.expose_inputs(MDCalculation, namespace="md", exclude=("potentials", "structure", "parameters"),
                           namespace_options={"help": "Code and options of the exploration MD runs."})
        spec.input("md.max_concurrent", valid_type=orm.Int, default=lambda: orm.Int(8), validator=at_least_one("md.max_concurrent"),
                   help="At most this many MD runs alive at once; the others are launched when a batch has ended.")
        spec.input("exploration", valid_type=orm.List, validator=validate_stages,
                   help="Exploration stages, run in order; each a dict of StageSettings (temperatures in K, "
                        "pressure in GPa for NPT, timestep in fs, steps, save_interval, runs, start_from, ...).")
        spec.input("selection", valid_type=orm.Dict, default=lambda: orm.Dict({}), validator=validate_selection,
                   help="Trust window (trust_low, trust_high in eV/Å, relative), max_selected, diversity, families.")
        spec.input("stopping", valid_type=orm.Dict, default=lambda: orm.Dict({}), validator=validate_stopping,
                   help=f"Stopping and failure rules (StoppingSettings); defaults {StoppingSettings().to_dict()}.")
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
                cls.plan_exploration,
                while_(cls.has_md_to_run)(cls.launch_md_runs),
                cls.inspect_exploration,
                cls.select,
                if_(cls.has_selection)(cls.label_selection, cls.merge_selection),
                cls.decide,
            ),
            cls.finalize,
        )
        spec.output_namespace("ensemble", valid_type=PotentialData, dynamic=True,
                              help="The final ensemble (the last one trained, also when the run stopped early).")
        spec.output("dataset", valid_type=TrainingSetData, required=False,
                    help="The final training set, all labels merged (also when the run stopped early).")
        spec.output("report", valid_type=orm.Dict, help="One entry per iteration: sizes, errors, fractions, times.")
        spec.exit_code(401, "ERROR_MAX_ITERATIONS", message="Not converged after the maximum number of iterations.")
        spec.exit_code(402, "ERROR_TOO_MANY_LABEL_FAILURES", message="Labelling failed for {fraction:.0%} of the structures.")
        spec.exit_code(403, "ERROR_ENSEMBLE_FAILED", message="Only {count} ensemble members trained; at least {minimum} are needed.")
        spec.exit_code(404, "ERROR_EXPLORATION_FAILED", message="Every exploration MD run failed.")
        spec.exit_code(405, "ERROR_NO_TRAINING_DATA", message="No structure of the initial set could be labelled: {reason}")
        spec.exit_code(406, "ERROR_NO_CANDIDATES",
                       message="Iteration {iteration} found no frame to label and did not converge: {accurate:.0%} of "
                               "its frames accurate, {failed:.0%} beyond trust_high; raise selection.trust_high, train "
                               "the members longer, or start from more labelled structures.")

    # ---------------------------------------------------------------------------- protocols

    @classmethod
    def get_protocol_filepath(cls) -> Traversable:
        """``protocols/active_learning.yaml``: the protocols ``fast``, ``balanced`` (default) and ``stringent``."""
        return files("tace_aiida.workflows") / "protocols" / "active_learning.yaml"

    @classmethod
    def get_builder_from_protocol(
        cls,
        codes: dict[str, orm.AbstractCode],
        structures: Mapping[str, orm.StructureData | Atoms | Structure] | None,
        protocol: str | None = None,
        overrides: dict | None = None,
        *,
        calculator: str | None = None,
        pseudo_family: str | None = None,
    ) -> ProcessBuilder:
        """A builder that learns a potential from ``structures`` with the settings of ``protocol``.

        ``codes`` maps ``train``, ``md`` and ``label`` to codes. A pw.x ``label`` code labels through
        ``label_qe`` (its ``protocol`` is the pw protocol of the same name, ``pseudo_family`` an
        installed aiida-pseudo family, by default the pw protocol's); any other labels through
        ``label_ase`` with ``calculator``, an ASE calculator's import path. ``overrides`` are merged
        into the protocol's inputs, dicts key by key (lists such as ``exploration`` are replaced).
        ``structures`` maps labels to StructureData, ASE ``Atoms`` or pymatgen ``Structure``; it may be None when
        ``builder.dataset`` is set instead.
        """
        available = sorted(cls.get_available_protocols())
        if protocol is not None and protocol not in available and cls._check_if_alias(protocol) is None:
            raise ValueError(f"unknown protocol {protocol!r}; choose among {available}")
        check_codes(codes)
        inputs = cls.get_protocol_inputs(protocol, overrides)
        inputs = choose_labeller(inputs, codes["label"], calculator, pseudo_family)
        inputs["train"] = {**inputs.get("train", {}), "code": codes["train"]}
        inputs["md"] = {**inputs.get("md", {}), "code": codes["md"]}
        if structures:
            inputs["structures"] = structure_nodes(structures)
        builder = cls.get_builder()
        builder._update(to_nodes(cls.spec().inputs, inputs))
        problem = uncertainty_problem(builder.ensemble_size, builder.selection)
        if problem:
            raise ValueError(problem)
        return builder

    # ----------------------------------------------------------------------------- settings

    @property
    def stopping(self) -> StoppingSettings:
        """The ``stopping`` input, validated."""
        return StoppingSettings.from_dict(self.inputs.stopping.get_dict(), owner="stopping")

    @property
    def stages(self) -> list[StageSettings]:
        """The ``exploration`` stages, validated, in order."""
        return read_stages(self.inputs.exploration.get_list())

    @property
    def selection_settings(self) -> SelectionSettings:
        """The ``selection`` input, validated."""
        return SelectionSettings.from_dict(self.inputs.selection.get_dict())

    # -------------------------------------------------------------------------------- set-up

    def setup(self) -> None:
        """Start at stage 0 with the initial dataset and ensemble (when given)."""
        self.ctx.stage = 0
        self.ctx.converged_count = 0
        self.ctx.iteration = 0
        self.ctx.stop_reason = None
        self.ctx.iterations = []
        self.ctx.calibration = None
        self.ctx.uncertainty_scale = 1.0
        self.ctx.previous_lower_bound = None
        self.ctx.label_failures = 0
        self.ctx.dataset = self.inputs.get("dataset")
        self.ctx.ensemble = list(self.inputs.get("initial_ensemble", {}).values())

    def has_initial_structures(self) -> bool:
        """Whether unlabelled ``structures`` were given (else the ``dataset`` is already labelled)."""
        return "structures" in self.inputs

    def _label(self, structures: TrainingSetData, link_label: str) -> orm.ProcessNode:
        """Submit the labeller that was given (``label_ase`` or ``label_qe``) on ``structures``."""
        namespace = next(namespace for namespace in LABELLERS if namespace in self.inputs)
        process = LABELLERS[namespace]
        return submit_once(self, process, link_label, **self.exposed_inputs(process, namespace), structures=structures)

    def label_initial(self) -> ToContext | ExitCode:
        """Label the initial structures, or their variants when ``transformations`` are given (405 when they make
        none)."""
        if "transformations" in self.inputs:
            generated = generate_variants(self.inputs.transformations, self.inputs.transformation_seed, orm.Bool(True),
                                          **self.inputs.structures)
            unlabelled = generated["structures"]
            if unlabelled.num_structures == 0:
                reason = f"the `transformations` made no structure (report: {generated['report'].get_dict()})"
                return self._stop_with(self.exit_codes.ERROR_NO_TRAINING_DATA.format(reason=reason))
            self.report(f"labelling {unlabelled.num_structures} variants of the {len(self.inputs.structures)} "
                        "initial structures")
        else:
            conditions = {"conditions": self.inputs.conditions} if "conditions" in self.inputs else {}
            unlabelled = structures_to_dataset(**conditions, **self.inputs.structures)
            self.report(f"labelling {unlabelled.num_structures} initial structures")
        return ToContext(initial_labels=self._label(unlabelled, "label_initial"))

    def collect_initial(self) -> ExitCode | None:
        """Merge the initial labels into the initial dataset; stop (405) when none could be made."""
        node = self.ctx.initial_labels
        if "dataset" not in node.outputs:
            reason = first_label_failure(node)
            self.report(f"labelling the initial structures failed: {reason}")
            return self._stop_with(self.exit_codes.ERROR_NO_TRAINING_DATA.format(reason=reason))
        labelled = node.outputs.dataset
        self.ctx.dataset = merge_datasets(initial=self.ctx.dataset, labelled=labelled) if self.ctx.dataset else labelled
        return None

    def prepare_exploration_starts(self) -> None:
        """The initial structures, or frames spread over the initial dataset, start the exploration."""
        if "structures" in self.inputs:
            self.ctx.starts = dict(self.inputs.structures)
            given = self.inputs.conditions.get_dict() if "conditions" in self.inputs else {}
            self.ctx.start_conditions = {label: condition_info(given[label]) for label in given}
        else:
            extracted = extract_structures(self.ctx.dataset, orm.Int(self.stages[0].dataset_starts))
            self.ctx.starts, self.ctx.start_conditions = exploration_starts(extracted)

    # ---------------------------------------------------------------------------------- loop

    def should_iterate(self) -> bool:
        """Whether no stop reason has been set yet (convergence, limits and failures set one)."""
        return self.ctx.stop_reason is None

    def train_ensemble(self) -> ToContext | None:
        """Train every member on the current dataset (warm-started), unless the dataset did not change."""
        self.ctx.iteration += 1
        if self.ctx.ensemble and self.ctx.get("trained_dataset") == self.ctx.dataset.uuid:
            self.report(f"iteration {self.ctx.iteration}: the dataset did not change; keeping the ensemble")
            return None
        self.ctx.trained_dataset = self.ctx.dataset.uuid
        inputs = self.exposed_inputs(TrainCalculation, "train")
        inputs["parameters"] = self._training_parameters(inputs["parameters"])
        previous = self.ctx.ensemble if self.inputs.warm_start.value else []
        new_elements = sorted(set(self.ctx.dataset.elements) - {e for member in previous for e in member.elements})
        if previous and new_elements:
            self.report(f"iteration {self.ctx.iteration}: the dataset brings {new_elements}, which the members were "
                        "not trained on; they train from scratch")
            previous = []
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

    def _training_parameters(self, parameters: orm.Dict) -> orm.Dict:
        """``parameters``, without a validation split when the dataset is a single structure (it cannot be split:
        the members train on it and keep their epoch of lowest training loss); the same node otherwise."""
        if self.ctx.dataset.num_structures > 1 or parameters.get("valid_fraction", TrainingConfig.valid_fraction) == 0:
            return parameters
        self.report(f"iteration {self.ctx.iteration}: one structure, too few to hold out validation frames; "
                    "the members train on it without a validation split")
        return orm.Dict({**parameters.get_dict(), "valid_fraction": 0.0})

    def _iteration_children(self, kind: str) -> list[orm.ProcessNode]:
        """The children of this iteration whose link label says ``kind`` (``train``, ``md``), in launch order."""
        prefix = f"iteration_{self.ctx.iteration:02d}_{kind}_"
        return [self.ctx[key] for key in sorted(self.ctx.keys()) if key.startswith(prefix)]

    def inspect_ensemble(self) -> ExitCode | None:
        """Keep the members that trained; stop (403) with fewer than ``min_members``."""
        children = self._iteration_children("train")
        if not children:
            return None
        trained = [node for node in children if node.is_finished_ok]
        minimum = required_members(self.stopping, self.inputs.ensemble_size.value)
        if len(trained) < minimum:
            return self._stop_with(self.exit_codes.ERROR_ENSEMBLE_FAILED.format(count=len(trained), minimum=minimum))
        self.ctx.ensemble = [node.outputs.potential for node in trained]
        self.ctx.training_metrics = [node.outputs.metrics.get_dict() for node in trained]
        return None

    def plan_exploration(self) -> None:
        """The MD runs of this iteration (:func:`.exploration.plan_md_runs`), launched by :meth:`launch_md_runs`."""
        stage = self.stages[self.ctx.stage]
        starts, conditions = self.ctx.starts, self.ctx.get("start_conditions", {})
        if stage.start_from == "dataset":
            starts, conditions = exploration_starts(extract_structures(self.ctx.dataset, orm.Int(stage.dataset_starts)))
        self.ctx.md_starts = dict(starts)
        self.ctx.md_conditions = conditions
        self.ctx.md_runs = plan_md_runs(list(starts), stage)
        open_window(self, "md_window")
        self.report(f"iteration {self.ctx.iteration}: stage {self.ctx.stage} ({stage.name or 'unnamed'}), "
                    f"{len(self.ctx.md_runs)} MD runs, at most {self.inputs.md.max_concurrent.value} at once")

    def has_md_to_run(self) -> bool:
        """Whether planned MD runs of this iteration are still to be launched or running."""
        return window_is_open(self, "md_window", len(self.ctx.md_runs))

    def launch_md_runs(self) -> ToContext | None:
        """Top the MD runs alive up to ``md.max_concurrent`` (with the ensemble) and wait for the oldest one."""
        stage = self.stages[self.ctx.stage]
        inputs = self.exposed_inputs(MDCalculation, "md")
        potentials = {f"member_{i}": p for i, p in enumerate(self.ctx.ensemble)}
        threshold = stop_threshold(stage, self.selection_settings.window.trust_high) / self.ctx.uncertainty_scale
        labels = [f"iteration_{self.ctx.iteration:02d}_md_{index:03d}" for index in range(len(self.ctx.md_runs))]

        def launch(index: int) -> orm.ProcessNode:
            start_label, temperature, run = self.ctx.md_runs[index]
            parameters = md_parameters(stage, temperature, run, self.ctx.iteration, threshold,
                                       self.selection_settings.uncertainty)
            conditions = self.ctx.get("md_conditions", {}).get(start_label)
            extra = {"conditions": orm.Dict(conditions)} if conditions and conditions != condition_info({}) else {}
            return submit_once(self, MDCalculation, labels[index], **inputs, **extra, potentials=potentials,
                               structure=self.ctx.md_starts[start_label], parameters=orm.Dict(parameters))

        launched, wait = fill_window(self, "md_window", labels, self.inputs.md.max_concurrent.value, launch)
        if launched and len(launched) < len(labels):
            self.report(f"iteration {self.ctx.iteration}: launched MD runs {launched.start} to {launched.stop - 1} "
                        f"of {len(labels)}")
        return wait

    def inspect_exploration(self) -> ExitCode | None:
        """Keep the trajectories (also of runs stopped as unphysical); stop (404) when every run failed."""
        runs = self._iteration_children("md")
        blown_up = MDCalculation.exit_codes.ERROR_UNPHYSICAL.status
        finished = [node for node in runs if node.is_finished_ok or node.exit_status == blown_up]
        if not finished:
            return self._stop_with(self.exit_codes.ERROR_EXPLORATION_FAILED)
        self.ctx.trajectories = {f"run_{i:03d}": node.outputs.trajectory for i, node in enumerate(finished)}
        self.ctx.md_failures = len(runs) - len(finished)
        self.ctx.stop_reasons = [node.outputs.result["stop_reason"] for node in finished]
        return None

    def select(self) -> None:
        """Classify the frames by the trust window and pick diverse candidates (``tace.select_frames``)."""
        name = self.stages[self.ctx.stage].name
        families = orm.Dict({label: name for label in self.ctx.trajectories}) if name else None
        scale = orm.Float(self.ctx.uncertainty_scale) if self.selection_settings.calibrate else None
        outputs = select_frames(parameters=self.inputs.selection, families=families, uncertainty_scale=scale,
                                **self.ctx.trajectories)
        self.ctx.selected = outputs["selected"]
        self.ctx.selection_report = outputs["report"].get_dict()
        report = self.ctx.selection_report
        self.report(f"iteration {self.ctx.iteration}: {report['accurate']} accurate, {report['candidate']} candidate, "
                    f"{report['failed']} failed frames; {report['selected']} selected")

    def has_selection(self) -> bool:
        """Whether the selection holds any frame to label."""
        return self.ctx.selected.num_structures > 0

    def label_selection(self) -> ToContext:
        """Label the selected frames."""
        return ToContext(new_labels=self._label(self.ctx.selected, f"iteration_{self.ctx.iteration:02d}_label"))

    def merge_selection(self) -> ExitCode | None:
        """Merge the new labels into the dataset; stop (402) when more than the failure budget failed.

        What was labelled is merged even then: no finished label is thrown away.
        """
        node = self.ctx.new_labels
        selected = self.ctx.selected.num_structures
        num_failed = node.outputs.report.get_dict()["num_failed"] if "report" in node.outputs else None
        fraction = label_failure_fraction(num_failed, selected)
        self.ctx.label_failures = selected if num_failed is None else num_failed
        if "dataset" in node.outputs:
            labelled = node.outputs.dataset
            self.ctx.calibration = calibration(labelled, self.ctx.uncertainty_scale)
            self._recalibrate(self.ctx.calibration)
            self.ctx.dataset = merge_datasets(previous=self.ctx.dataset, new=labelled)
        if over_failure_budget(fraction, self.stopping):
            self.report(f"iteration {self.ctx.iteration}: {self.ctx.label_failures} of {selected} labels failed")
            self.ctx.iterations.append(self._iteration_entry())
            return self._stop_with(self.exit_codes.ERROR_TOO_MANY_LABEL_FAILURES.format(fraction=fraction))
        return None

    def _recalibrate(self, entry: dict) -> None:
        """With ``selection.calibrate``, use the scale fitted on the new labels from the next iteration on."""
        if self.selection_settings.calibrate and entry["scale"] is not None:
            self.ctx.uncertainty_scale = entry["scale"]
            self.report(f"iteration {self.ctx.iteration}: the ensemble's force deviation times {entry['scale']:.2f} "
                        f"is the expected error (miscalibration area {entry['miscalibration_area_used']:.3f} with the "
                        f"scale used, {entry['miscalibration_area']:.3f} unscaled)")

    def decide(self) -> None:
        """Record the iteration, then advance the stage or stop (:func:`.decisions.advance`)."""
        self.ctx.iterations.append(self._iteration_entry())
        self.ctx.calibration = None
        self.ctx.label_failures = 0
        selection = self.ctx.selection_report
        bound = selection["lower_bounds"].get(self.stages[self.ctx.stage].name or "")
        previous = self.ctx.previous_lower_bound
        change = abs(bound - previous) if bound is not None and previous is not None else None
        decision = advance(self.ctx.stage, self.ctx.converged_count, self.ctx.iteration,
                           selection["accurate_fraction"], selection["candidate"], self.stopping, len(self.stages),
                           lower_bound_change=change)
        self.ctx.previous_lower_bound = bound if decision.stage == self.ctx.stage else None
        self.ctx.stage, self.ctx.converged_count, self.ctx.stop_reason = (
            decision.stage, decision.converged_count, decision.stop_reason)
        if decision.message:
            self.report(decision.message)

    def _iteration_entry(self) -> dict:
        """This iteration's entry of the ``report`` output."""
        return iteration_entry(
            iteration=self.ctx.iteration, stage=self.ctx.stage, dataset_size=self.ctx.trained_on,
            dataset_size_after=self.ctx.dataset.num_structures, members=len(self.ctx.ensemble),
            training_metrics=self.ctx.training_metrics, selection=self.ctx.selection_report,
            label_failures=self.ctx.label_failures, md_failures=self.ctx.md_failures,
            md_stop_reasons=self.ctx.stop_reasons, calibration_data=self.ctx.calibration,
            steps={"train": self._iteration_children("train"), "md": self._iteration_children("md")},
        )

    # ------------------------------------------------------------------------------- results

    def _attach_outputs(self) -> None:
        """The ensemble, the dataset and the report as they stand (at the end, or when the run stops early)."""
        for index, potential in enumerate(self.ctx.ensemble):
            self.out(f"ensemble.member_{index}", potential)
        if self.ctx.dataset is not None:
            self.out("dataset", self.ctx.dataset)
        report = {"stop_reason": self.ctx.stop_reason, "iterations": self.ctx.iterations}
        self.out("report", freeze_report(orm.Dict(report)))

    def _stop_with(self, exit_code: ExitCode) -> ExitCode:
        """Stop the run with ``exit_code``, keeping every output made so far."""
        self.ctx.stop_reason = exit_code.message
        self._attach_outputs()
        return exit_code

    def finalize(self) -> ExitCode | None:
        """Attach the outputs; exit 401 when the cap on iterations ended the run, 406 when nothing was left to label."""
        self._attach_outputs()
        self.report(f"finished after {self.ctx.iteration} iterations: {self.ctx.stop_reason}")
        if self.ctx.stop_reason == MAX_ITERATIONS:
            return self.exit_codes.ERROR_MAX_ITERATIONS
        if self.ctx.stop_reason == NO_CANDIDATES:
            last = self.ctx.iterations[-1]
            return self.exit_codes.ERROR_NO_CANDIDATES.format(
                iteration=last["iteration"], accurate=last["accurate_fraction"], failed=last["failed_fraction"])
        return None
