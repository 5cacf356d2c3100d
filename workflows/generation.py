"""``tace.generate_dataset``: variants of parent structures, deduplicated, labelled once, as one training set.

Outline: ``generate`` (the calcfunction ``tace.generate_variants``: transformations and deduplication, so the
variants and the report of what was dropped are in the provenance graph), ``find_earlier_labels`` (labels made
before for the same structures by the same labeller are reused: see :mod:`tace_aiida.generation.reuse`),
``label`` (the rest, by the labeller given, in batches of at most ``max_concurrent`` processes), ``finalize``
(the ``dataset``, made of the reused and the new labels without copying them, and the ``report``). Run again
with the same inputs, it labels only what is missing, however the first run ended.
"""

from __future__ import annotations

import time

from aiida import orm
from aiida.engine import ExitCode, ToContext, WorkChain, calcfunction, if_
from tace_aiida.workflows.killing import ForcedKillReachesChildren

from tace_aiida.data import TrainingSetData
from tace_aiida.generation import generate, read_transformations
from tace_aiida.generation.reuse import earlier_labels, labeller_key, with_defaults
from tace_aiida.labelling.failures import describe_failures

from .decisions import label_failure_fraction, over_failure_budget
from .labelling.ase_batches import AseLabelBatchesWorkChain
from .labelling.qe import QeLabelWorkChain
from .resubmission import ClosesInterruptedCalcfunctions, submit_once
from .settings import StoppingSettings

LABELLERS = {"label_ase": AseLabelBatchesWorkChain, "label_qe": QeLabelWorkChain}


def validate_transformations(value: orm.List, _) -> str | None:
    try:
        read_transformations(value.get_list())
    except ValueError as error:
        return str(error)
    return None


def validate_failure_fraction(value: orm.Float, _) -> str | None:
    try:
        StoppingSettings.from_dict({"max_label_failure_fraction": value.value}, owner="max_failure_fraction")
    except (TypeError, ValueError) as error:
        return str(error)
    return None


def validate_inputs(inputs: dict, _) -> str | None:
    """At least one parent structure and exactly one labeller; periodic parents only for ``label_qe``."""
    if not inputs.get("structures"):
        return "the `structures` namespace is empty: give at least one parent structure"
    given = [namespace for namespace in LABELLERS if namespace in inputs]
    if len(given) != 1:
        return (f"fill exactly one labeller namespace, `label_ase` (code, calculator, parameters) or `label_qe` "
                f"(pw.x code, pseudo_family, protocol, overrides), not {given or 'none'}")
    molecules = sorted(label for label, structure in inputs["structures"].items() if not all(structure.pbc))
    if "label_qe" in inputs and molecules:
        return f"`label_qe` labels periodic cells only: structures {molecules} are not periodic in all three directions"
    return None


@calcfunction
def generate_variants(transformations: orm.List, seed: orm.Int, deduplicate: orm.Bool,
                      **structures: orm.StructureData) -> dict[str, orm.Data]:
    """The deduplicated variants (unlabelled; info ``parent``, ``content_hash``) and the generation report."""
    parents = {label: structure.get_ase() for label, structure in structures.items()}
    generated = generate(parents, transformations.get_list(), seed.value, symmetry=deduplicate.value)
    return {"structures": TrainingSetData(generated.frames), "report": orm.Dict(generated.report)}


@calcfunction
def split_by_reuse(structures: TrainingSetData, **earlier: TrainingSetData) -> dict[str, TrainingSetData]:
    """``reused``: the frames of the ``earlier`` labelled datasets whose ``content_hash`` is among ``structures``
    (the first found, datasets in sorted link-label order); ``missing``: the frames of ``structures`` not found."""
    wanted = {atoms.info["content_hash"] for atoms in structures.get_atoms()}
    reused = {}
    for label in sorted(earlier):
        for atoms in earlier[label].get_atoms():
            key = atoms.info.get("content_hash")
            if key in wanted and key not in reused:
                reused[key] = atoms
    missing = [atoms for atoms in structures.get_atoms() if atoms.info["content_hash"] not in reused]
    return {"reused": TrainingSetData(list(reused.values())), "missing": TrainingSetData(missing)}


@calcfunction
def complete_report(generation: orm.Dict, outcome: orm.Dict) -> orm.Dict:
    """The generation report completed with the outcome of reuse and labelling."""
    return orm.Dict({**generation.get_dict(), **outcome.get_dict()})


@calcfunction
def assemble_dataset(structures: TrainingSetData, **labelled: TrainingSetData) -> TrainingSetData:
    """The labelled frames of ``structures``: the ``labelled`` datasets as shards, no frame copied."""
    return TrainingSetData(shards=[labelled[label] for label in sorted(labelled)])


class GenerateDatasetWorkChain(ForcedKillReachesChildren, ClosesInterruptedCalcfunctions, WorkChain):
    """Generate variants of parent structures, deduplicate them, label what was not labelled before."""

    @classmethod
    def define(cls, spec):
        super().define(spec)
        spec.input_namespace("structures", valid_type=orm.StructureData, dynamic=True,
                             help="The parent structures (periodic cells or molecules), by label.")
        spec.input("transformations", valid_type=orm.List, validator=validate_transformations,
                   help="Transformations applied in order, each to every variant of the step before: dicts "
                        "`{'type': 'supercell' | 'strain' | 'rattle' | 'vacancy' | 'substitution' | 'surface' | "
                        "'box', ...settings}` (see tace_aiida.generation.settings).")
        spec.input("seed", valid_type=orm.Int, default=lambda: orm.Int(0),
                   help="Seed of the random choices (displacements, vacancy and substitution sites).")
        spec.input("deduplicate", valid_type=orm.Bool, default=lambda: orm.Bool(True),
                   help="Drop symmetry-equivalent variants (pymatgen StructureMatcher); exact repeats are always dropped.")
        spec.input("max_failure_fraction", valid_type=orm.Float, default=lambda: orm.Float(0.2),
                   validator=validate_failure_fraction,
                   help="Exit 401 (the labelled dataset still attached) when more than this fraction, in [0, 1), "
                        "of the structures to label failed.")
        spec.expose_inputs(LABELLERS["label_ase"], namespace="label_ase", exclude=("structures",),
                           namespace_options={"required": False, "populate_defaults": False,
                                              "help": "Label with an ASE calculator: tace.label_ase jobs of "
                                                      "`structures_per_job`, at most `max_concurrent` at once."})
        spec.expose_inputs(LABELLERS["label_qe"], namespace="label_qe", exclude=("structures",),
                           namespace_options={"required": False, "populate_defaults": False,
                                              "help": "Label with Quantum ESPRESSO's pw.x, one PwBaseWorkChain "
                                                      "per structure (tace.label_qe); periodic cells only."})
        spec.inputs.validator = validate_inputs
        spec.outline(
            cls.generate,
            cls.find_earlier_labels,
            if_(cls.has_missing)(cls.label),
            cls.finalize,
        )
        spec.output("dataset", valid_type=TrainingSetData, required=False,
                    help="The labelled variants (reused and new), usable as the initial `dataset` of "
                         "tace.active_learning; each frame's info has `content_hash`, `parent` and `label_uuid`.")
        spec.output("report", valid_type=orm.Dict,
                    help="made, kept, dropped by reason, steps, reused, labelled, failed (index in the generated set, "
                         "content_hash, error), labelling seconds and structures per minute.")
        spec.exit_code(301, "ERROR_NO_VARIANTS", message="The transformations made no structure.")
        spec.exit_code(401, "ERROR_TOO_MANY_LABEL_FAILURES", message="Labelling failed for {fraction:.0%} of the structures.")
        spec.exit_code(402, "ERROR_NO_LABELS", message="No structure could be labelled: {reason}")

    @property
    def labeller(self) -> str:
        return next(namespace for namespace in LABELLERS if namespace in self.inputs)

    def generate(self) -> ExitCode | None:
        """Make the variants and deduplicate them (calcfunction ``generate_variants``)."""
        self.ctx.started = time.time()
        outputs = generate_variants(self.inputs.transformations, self.inputs.seed, self.inputs.deduplicate,
                                    **self.inputs.structures)
        self.ctx.generated = outputs["structures"]
        self.ctx.generation = outputs["report"]
        report = outputs["report"].get_dict()
        self.report(f"generated {report['made']} variants of {len(self.inputs.structures)} parents; kept "
                    f"{report['kept']}, dropped {report['dropped']}")
        if report["kept"] == 0:
            self._attach_report(self._outcome())
            return self.exit_codes.ERROR_NO_VARIANTS
        return None

    def find_earlier_labels(self) -> None:
        """Reuse the labels that processes with the same labeller settings made for the same structures."""
        namespace = self.labeller
        process = LABELLERS[namespace]
        inputs = with_defaults(process, self.exposed_inputs(process, namespace))
        hashes = [atoms.info["content_hash"] for atoms in self.ctx.generated.get_atoms()]
        earlier = earlier_labels(namespace, inputs["code"], labeller_key(namespace, inputs), hashes)
        self.ctx.reused = None
        self.ctx.missing = self.ctx.generated
        if earlier:
            parts = split_by_reuse(self.ctx.generated, **{f"earlier_{i}": earlier[uuid]
                                                          for i, uuid in enumerate(sorted(earlier))})
            self.ctx.reused, self.ctx.missing = parts["reused"], parts["missing"]
        self.report(f"{self.ctx.generated.num_structures - self.ctx.missing.num_structures} structures labelled before "
                    f"with the same labeller (reused); {self.ctx.missing.num_structures} to label")

    def has_missing(self) -> bool:
        return self.ctx.missing.num_structures > 0

    def label(self) -> ToContext:
        """Label the missing structures with the labeller given (batched and throttled by it)."""
        namespace = self.labeller
        process = LABELLERS[namespace]
        child = submit_once(self, process, "label", **self.exposed_inputs(process, namespace),
                            structures=self.ctx.missing)
        self.report(f"labelling {self.ctx.missing.num_structures} structures with {child.process_label}<{child.pk}>")
        return ToContext(labels=child)

    def finalize(self) -> ExitCode | None:
        """The dataset of reused and new labels, the report; exit 401 over the failure budget, 402 with no label."""
        child = self.ctx.get("labels")
        parts = {"reused": self.ctx.reused} if self.ctx.reused is not None and self.ctx.reused.num_structures else {}
        if child is not None and "dataset" in child.outputs:
            parts["labelled"] = child.outputs.dataset
        outcome = self._outcome(child)
        if parts:
            self.out("dataset", assemble_dataset(self.ctx.generated, **parts))
        self._attach_report(outcome)
        rate = outcome["structures_per_minute"]
        self.report(f"dataset of {outcome['num_structures']} structures: {outcome['reused']} reused, "
                    f"{outcome['labelled']} labelled, {len(outcome['failed'])} failed"
                    + (f", {rate:.1f} structures/min" if rate else ""))
        if not parts:
            return self.exit_codes.ERROR_NO_LABELS.format(reason=describe_failures(outcome["failed"], "the run's `report`"))
        fraction = label_failure_fraction(len(outcome["failed"]), self.ctx.missing.num_structures)
        if over_failure_budget(fraction, StoppingSettings(max_label_failure_fraction=self.inputs.max_failure_fraction.value)):
            return self.exit_codes.ERROR_TOO_MANY_LABEL_FAILURES.format(fraction=fraction)
        return None

    def _failures(self, child: orm.ProcessNode) -> list[dict]:
        """``{index, content_hash, error}`` of every structure ``child`` did not label (index into the generated set);
        all of them, with the child's exit message, when it ended without a report."""
        hashes = [atoms.info["content_hash"] for atoms in self.ctx.missing.get_atoms()]
        index = {key: i for i, key in enumerate(atoms.info["content_hash"] for atoms in self.ctx.generated.get_atoms())}
        if "report" not in child.outputs:
            error = f"{child.process_label}<{child.pk}> failed as a whole: {child.exit_message or child.process_state.value}"
            return [{"index": index[key], "content_hash": key, "error": error} for key in hashes]
        return [{"index": index[hashes[entry["index"]]], "content_hash": hashes[entry["index"]], "error": entry["error"]}
                for entry in child.outputs.report["failures"]]

    def _outcome(self, child: orm.ProcessNode | None = None) -> dict:
        """Reused, labelled, failed (indices into the generated set); labelling wall time (s) and throughput."""
        reused = self.ctx.get("reused")
        reused = reused.num_structures if reused is not None else 0
        labelled = child.outputs.report["num_labelled"] if child is not None and "report" in child.outputs else 0
        seconds = (child.mtime - child.ctime).total_seconds() if child is not None else None
        return {
            "reused": reused, "labelled": labelled, "failed": self._failures(child) if child is not None else [],
            "num_structures": reused + labelled, "labelling_seconds": seconds,
            "structures_per_minute": 60.0 * labelled / seconds if seconds else None,
            "total_seconds": time.time() - self.ctx.started,
        }

    def _attach_report(self, outcome: dict) -> None:
        self.out("report", complete_report(self.ctx.generation, orm.Dict(outcome)))
