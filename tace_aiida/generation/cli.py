"""What ``tace-aiida generate`` does: read parents and transformations from files, build the workchain's inputs,
run or submit it with a progress bar of the structures labelled, and summarise its report."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import click
import yaml
from aiida import orm
from ase.io import read

from .settings import read_transformations

POLL_SECONDS = 2.0


def read_parents(paths: list[Path], index: str = ":") -> dict[str, orm.StructureData]:
    """Every frame ``index`` selects of every file ``ase.io.read`` reads (CIF, POSCAR, extxyz ...), by a label made
    of the file name (``<stem>_<k>`` for the k-th of several frames)."""
    parents: dict[str, orm.StructureData] = {}
    for path in paths:
        try:
            frames = read(path, index=index)
        except Exception as error:  # ase.io.read raises many types for unreadable files
            raise ValueError(f"cannot read structures from {str(path)!r}: {type(error).__name__}: {error}") from error
        frames = frames if isinstance(frames, list) else [frames]
        stem = re.sub(r"\W", "_", path.name.split(".")[0]) or "structure"
        for k, atoms in enumerate(frames):
            label = stem if len(frames) == 1 else f"{stem}_{k}"
            while label in parents:
                label += "_"
            parents[label] = orm.StructureData(ase=atoms)
    if not parents:
        raise ValueError(f"no structure in {[str(path) for path in paths]}")
    return parents


def read_transformation_file(path: Path) -> list[dict]:
    """The transformations of a YAML or JSON file (a list of dicts, or ``{transformations: [...]}``), checked."""
    text = path.read_text()
    try:
        settings = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (ValueError, yaml.YAMLError) as error:
        raise ValueError(f"cannot parse {str(path)!r}: {error}") from error
    if isinstance(settings, dict) and "transformations" in settings:
        settings = settings["transformations"]
    try:
        read_transformations(settings)
    except ValueError as error:
        raise ValueError(f"{path}: {error}") from error
    return settings


def labelling_progress(node: orm.WorkflowNode) -> tuple[int, int] | None:
    """(structures whose labelling process has ended, structures to label) of a generation run; None before it
    labels (``tace.label_ase`` jobs count their structures, ``PwBaseWorkChain`` runs one each)."""
    children = [link.node for link in node.base.links.get_outgoing(link_label_filter="label").all()]
    if not children:
        return None
    child = children[-1]
    done = 0
    for process in child.called_descendants:
        if not process.is_terminated:
            continue
        if process.process_type == "aiida.calculations:tace.label_ase":
            done += process.inputs.structures.num_structures
        elif process.process_label == "PwBaseWorkChain":
            done += 1
    return done, child.inputs.structures.num_structures


def build(parents: dict[str, orm.StructureData], transformations: list[dict], *, code: str, calculator: str,
          parameters: dict | None = None, seed: int = 0, deduplicate: bool = True, structures_per_job: int = 50,
          max_concurrent: int = 8, max_failure_fraction: float = 0.2):
    """The inputs of ``tace.generate_dataset`` labelled by ``calculator`` (an ASE calculator's import path)
    run by ``code`` (a ``tace-label`` code's label)."""
    from aiida.plugins import WorkflowFactory

    builder = WorkflowFactory("tace.generate_dataset").get_builder()
    builder.structures = parents
    builder.transformations = orm.List(transformations)
    builder.seed = orm.Int(seed)
    builder.deduplicate = orm.Bool(deduplicate)
    builder.max_failure_fraction = orm.Float(max_failure_fraction)
    builder.label_ase.code = orm.load_code(code)
    builder.label_ase.calculator = orm.Str(calculator)
    if parameters:
        builder.label_ase.parameters = orm.Dict(parameters)
    builder.label_ase.structures_per_job = orm.Int(structures_per_job)
    builder.label_ase.max_concurrent = orm.Int(max_concurrent)
    return builder


class Progress:
    """A click progress bar of the structures a generation run has labelled, shown once it labels."""

    def __init__(self, node: orm.WorkflowNode) -> None:
        self.node, self.bar, self.done = node, None, 0

    def poll(self) -> None:
        progress = labelling_progress(self.node)
        if progress is None:
            return
        done, total = progress
        if self.bar is None:
            self.bar = click.progressbar(length=total, label=f"labelling {total} structures")
            self.bar.__enter__()
        self.bar.update(done - self.done)
        self.done = done

    def close(self) -> None:
        self.poll()
        if self.bar is not None:
            self.bar.__exit__(None, None, None)


def run_with_progress(builder) -> orm.WorkflowNode:
    """Run ``builder`` in this process; a progress bar polled every ``POLL_SECONDS`` on the runner's event loop."""
    from aiida.manage import get_manager

    runner = get_manager().get_runner()
    process = runner.instantiate_process(builder)
    progress = Progress(process.node)

    def tick() -> None:
        progress.poll()
        if not process.has_terminated():
            runner.loop.call_later(POLL_SECONDS, tick)

    runner.loop.call_later(POLL_SECONDS, tick)
    runner.run(process)
    progress.close()
    return process.node


def follow(node: orm.WorkflowNode) -> None:
    """A progress bar of a run on the daemon, until it ends."""
    progress = Progress(node)
    while not node.is_terminated:
        progress.poll()
        time.sleep(POLL_SECONDS)
    progress.close()


def summary_lines(node: orm.WorkflowNode) -> list[str]:
    """How a generation run ended: made, deduplicated, reused, labelled, failed, throughput, the dataset."""
    lines = [f"{node.process_label}<{node.pk}> ended: exit status {node.exit_status}"
             + (f" ({node.exit_message})" if node.exit_message else "")]
    if "report" not in node.outputs:
        return lines
    report = node.outputs.report.get_dict()
    dropped = ", ".join(f"{count} {reason.replace('_', ' ')}" for reason, count in report["dropped"].items())
    lines.append(f"  made {report['made']} variants, kept {report['kept']} (dropped: {dropped})")
    if "reused" in report:
        rate = report["structures_per_minute"]
        lines.append(f"  reused {report['reused']}, labelled {report['labelled']}, failed {len(report['failed'])}"
                     + (f", {rate:.1f} structures/min" if rate else ""))
        lines += [f"    failed {entry['index']}: {entry['error']}" for entry in report["failed"][:10]]
    if "dataset" in node.outputs:
        dataset = node.outputs.dataset
        lines.append(f"  dataset: TrainingSetData<{dataset.pk}> of {dataset.num_structures} structures "
                     f"(pass it as the `dataset` of tace.active_learning)")
    return lines
