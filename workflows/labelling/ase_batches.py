"""``tace.label_ase_batches``: a large set labelled by ``tace.label_ase`` jobs of ``structures_per_job`` each.

The set is split into chunks; the jobs run in parallel on the computer's workers, at most
``max_concurrent`` at a time (a rolling window, :mod:`..window`: a job is launched as soon as an
earlier one has finished), and their labels and reports are combined in a calcfunction whose
inputs are the jobs' outputs (each frame's ``label_uuid`` still names its own job). A job that
failed as a whole (killed, lost) counts every structure of its chunk as failed, with the job's exit
message as the reason. Outputs are those of ``tace.label_ase``; ``input_index`` refers to the
whole set.
"""

from __future__ import annotations

from aiida import orm
from aiida.engine import ToContext, WorkChain, calcfunction, while_
from tace_aiida.workflows.killing import ForcedKillReachesChildren
from tace_aiida.workflows.resubmission import ClosesInterruptedCalcfunctions, submit_once
from tace_aiida.workflows.window import fill_window, open_window, window_is_open

from tace_aiida.calculations.label_ase import AseLabelCalculation
from tace_aiida.data import TrainingSetData
from tace_aiida.labelling.failures import describe_failures


def validate_positive(value: orm.Int, _) -> str | None:
    return None if value.value >= 1 else f"must be >= 1, not {value.value}"


@calcfunction
def split_into_chunks(structures: TrainingSetData, size: orm.Int) -> dict[str, TrainingSetData]:
    """Consecutive chunks of ``size`` frames, as outputs ``chunk_<k>``."""
    frames = structures.get_atoms()
    return {f"chunk_{k}": TrainingSetData(frames[start:start + size.value])
            for k, start in enumerate(range(0, len(frames), size.value))}


@calcfunction
def combine_labels(size: orm.Int, failures: orm.List, **outputs: orm.Data) -> dict[str, orm.Data]:
    """One dataset and one report from the jobs' ``dataset_<k>`` and ``report_<k>``.

    ``failures`` lists ``{index, error}`` (whole-set indices) of the structures of jobs that failed as a whole.
    """
    frames, failed, seconds, structures = [], list(failures.get_list()), 0.0, len(failures.get_list())
    for label in sorted((key for key in outputs if key.startswith("report_")), key=lambda key: int(key[7:])):
        chunk = int(label[7:])
        offset = chunk * size.value
        report = outputs[label].get_dict()
        structures += report["num_structures"]
        seconds += report["seconds"]
        failed += [{"index": entry["index"] + offset, "error": entry["error"]} for entry in report["failures"]]
        if f"dataset_{chunk}" in outputs:
            for atoms in outputs[f"dataset_{chunk}"].get_atoms():
                atoms.info["input_index"] = int(atoms.info.get("input_index", 0)) + offset
                frames.append(atoms)
    failed.sort(key=lambda entry: entry["index"])
    results: dict[str, orm.Data] = {"report": orm.Dict({
        "num_structures": structures, "num_labelled": len(frames), "num_failed": len(failed),
        "failures": failed, "seconds": seconds,
    })}
    if frames:
        results["dataset"] = TrainingSetData(frames)
    return results


class AseLabelBatchesWorkChain(ForcedKillReachesChildren, ClosesInterruptedCalcfunctions, WorkChain):
    """Label a training set with an ASE calculator in parallel jobs; failures per structure."""

    @classmethod
    def define(cls, spec):
        super().define(spec)
        spec.expose_inputs(AseLabelCalculation, exclude=("structures", "metadata"))
        spec.input("options", valid_type=orm.Dict, required=False,
                   help="`metadata.options` of every job (resources, max_wallclock_seconds, ...).")
        spec.input("structures", valid_type=TrainingSetData, help="The structures to label; labels present are replaced.")
        spec.input("structures_per_job", valid_type=orm.Int, default=lambda: orm.Int(50), validator=validate_positive,
                   help="Structures labelled by one tace.label_ase job, in series.")
        spec.input("max_concurrent", valid_type=orm.Int, default=lambda: orm.Int(8), validator=validate_positive,
                   help="At most this many jobs alive at once; the next starts as soon as one has finished.")
        spec.outline(cls.split, while_(cls.has_jobs_to_run)(cls.launch_jobs), cls.combine)
        spec.output("dataset", valid_type=TrainingSetData, required=False,
                    help="The structures that were labelled (eV, eV/Å, eV/Å^3); `input_index` and `label_uuid` "
                         "(the job) in each frame's info.")
        spec.output("report", valid_type=orm.Dict, help="Counts, and the index and error of every failed structure.")
        spec.exit_code(310, "ERROR_ALL_STRUCTURES_FAILED", message="No structure could be labelled: {reason}")

    def split(self) -> None:
        """The chunks of ``structures_per_job`` structures."""
        self.ctx.chunks = split_into_chunks(self.inputs.structures, self.inputs.structures_per_job,
                                            metadata={"call_link_label": "split_into_chunks"})
        open_window(self, "jobs")

    def has_jobs_to_run(self) -> bool:
        """Whether jobs are left to launch or still running."""
        return window_is_open(self, "jobs", len(self.ctx.chunks))

    def launch_jobs(self) -> ToContext | None:
        """Top the jobs alive up to ``max_concurrent`` and wait for the oldest one."""
        inputs = self.exposed_inputs(AseLabelCalculation)
        if "options" in self.inputs:
            inputs["metadata"] = {"options": self.inputs.options.get_dict()}
        total = len(self.ctx.chunks)

        def launch(k: int):
            return submit_once(self, AseLabelCalculation, f"job_{k}", **inputs, structures=self.ctx.chunks[f"chunk_{k}"])

        launched, wait = fill_window(self, "jobs", [f"job_{k}" for k in range(total)],
                                     self.inputs.max_concurrent.value, launch)
        if launched:
            self.report(f"launched labelling jobs {launched.start} to {launched.stop - 1} of {total}")
        return wait

    def combine(self):
        """Combine the jobs' labels and reports; exit 310 when nothing could be labelled."""
        size = self.inputs.structures_per_job
        outputs, failures = {}, []
        for k in range(len(self.ctx.chunks)):
            job = self.ctx[f"job_{k}"]
            if "report" in job.outputs:
                outputs[f"report_{k}"] = job.outputs.report
                if "dataset" in job.outputs:
                    outputs[f"dataset_{k}"] = job.outputs.dataset
                continue
            reason = f"{job.process_label}<{job.pk}> failed as a whole: {job.exit_message or job.process_state.value}"
            failures += [{"index": k * size.value + i, "error": reason}
                         for i in range(self.ctx.chunks[f"chunk_{k}"].num_structures)]
            self.report(reason)
        results = combine_labels(size, orm.List(failures), **outputs, metadata={"call_link_label": "combine_labels"})
        self.out("report", results["report"])
        if "dataset" not in results:
            reason = describe_failures(results["report"]["failures"])
            return self.exit_codes.ERROR_ALL_STRUCTURES_FAILED.format(reason=reason)
        self.out("dataset", results["dataset"])
        return None
