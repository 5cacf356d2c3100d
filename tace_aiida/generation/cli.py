"""``tace-aiida generate``: read parents and transformations from files, build the inputs of
``tace.generate_dataset``, run or submit it with a progress bar of the structures labelled, summarise its report.

The code chooses the labeller, as for ``tace.active_learning``: a ``quantumespresso.pw`` code labels with pw.x
(``label_qe``: ``--pseudo-family``, ``--protocol``, ``--overrides``), a ``tace-label`` code with an ASE
calculator (``label_ase``: ``--calculator``, ``--parameters``, ``--structures-per-job``).
"""

from __future__ import annotations

import json
import re
import time
from pathlib import Path
from typing import Any

import click
import yaml
from aiida import orm
from ase.io import read

from .settings import read_transformations

POLL_SECONDS = 2.0
DEFAULT_CALCULATOR = "ase.calculators.emt.EMT"
ASE_CODE_PLUGINS = (None, "tace.label_ase")
PROTOCOLS = ("fast", "balanced", "stringent")
#: The process types of the per-structure pw.x workchains of ``tace.label_qe`` (aiida-quantumespresso's own in runs made
#: before ``tace.pw_base`` existed).
PW_BASE_PROCESS_TYPES = ("aiida.workflows:tace.pw_base", "aiida.workflows:quantumespresso.pw.base")


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


def read_settings_file(path: Path) -> Any:
    """The content of a JSON (``.json``) or YAML (any other suffix) file."""
    text = path.read_text()
    try:
        return json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (ValueError, yaml.YAMLError) as error:
        raise ValueError(f"cannot parse {str(path)!r}: {error}") from error


def read_json_option(text: str | None, option: str) -> dict | None:
    """The JSON object given to ``option`` (None when not given)."""
    if text is None:
        return None
    try:
        value = json.loads(text)
    except ValueError as error:
        raise ValueError(f"{option}: not JSON: {text!r} ({error})") from error
    if not isinstance(value, dict):
        raise ValueError(f"{option} must be a JSON object such as '{{\"key\": 1}}', not {text!r}")
    return value


def read_transformation_file(path: Path) -> list[dict]:
    """The transformations of a YAML or JSON file (a list of dicts, or ``{transformations: [...]}``), checked."""
    settings = read_settings_file(path)
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
    child = max(children, key=lambda process: process.pk)  # the newest: a step run again after a crash makes another
    done = 0
    for process in child.called_descendants:
        if not process.is_terminated:
            continue
        if process.process_type == "aiida.calculations:tace.label_ase":
            done += process.inputs.structures.num_structures
        elif process.process_type in PW_BASE_PROCESS_TYPES:
            done += 1
    return done, child.inputs.structures.num_structures


def load_labelling_code(label: str) -> orm.AbstractCode:
    """The code ``label``: a ``tace-label`` code (ASE calculators) or a ``quantumespresso.pw`` code (pw.x)."""
    from aiida.common.exceptions import MultipleObjectsError, NotExistent

    from tace_aiida.workflows.labelling.qe import PW_PLUGIN

    try:
        code = orm.load_code(label)
    except (NotExistent, MultipleObjectsError) as error:
        raise ValueError(f"unknown code {label!r}: {error} (see `verdi code list`)") from error
    plugin = code.default_calc_job_plugin
    if plugin not in (*ASE_CODE_PLUGINS, PW_PLUGIN):
        raise ValueError(f"code {label!r} is for the plugin {plugin!r}: give a tace-label code (ASE calculators) "
                         f"or a {PW_PLUGIN!r} code (pw.x)")
    return code


def labeller_inputs(code: orm.AbstractCode, calculator: str | None, pseudo_family: str | None,
                    ase: dict[str, Any], qe: dict[str, Any]) -> dict[str, dict]:
    """The one labeller namespace ``code`` calls for (``label_qe`` for pw.x, else ``label_ase`` with ``calculator``,
    by default EMT), filled with its settings among ``ase`` and ``qe`` (None: not given, the default)."""
    from tace_aiida.workflows.labelling.qe import PW_PLUGIN
    from tace_aiida.workflows.protocol_builder import choose_labeller

    given = {"label_ase": {key: value for key, value in ase.items() if value is not None},
             "label_qe": {key: value for key, value in qe.items() if value is not None}}
    if calculator is None and code.default_calc_job_plugin != PW_PLUGIN:
        calculator = DEFAULT_CALCULATOR
    inputs = choose_labeller(given, code, calculator, pseudo_family)
    (chosen,) = inputs
    (other,) = set(given) - {chosen}
    ignored = sorted(set(given[other]) - set(given[chosen]))
    if ignored:
        options = ", ".join(f"--{key.replace('_', '-')}" for key in ignored)
        raise ValueError(f"{options}: only for {other}; code {code.full_label!r} labels with {chosen}")
    return inputs


def build(parents: dict[str, orm.StructureData], transformations: list[dict], *, code: str,
          calculator: str | None = None, parameters: dict | None = None, pseudo_family: str | None = None,
          protocol: str | None = None, overrides: dict | None = None, options: dict | None = None, seed: int = 0,
          deduplicate: bool = True, structures_per_job: int | None = None, max_concurrent: int | None = None,
          max_failure_fraction: float = 0.2):
    """The inputs of ``tace.generate_dataset``, checked by its validators, labelled by ``code`` (a ``tace-label``
    code running ``calculator``, an ASE calculator's import path, or a pw.x code); None: the workchain's default."""
    from aiida.plugins import WorkflowFactory

    from tace_aiida.workflows.protocol_builder import to_nodes

    process = WorkflowFactory("tace.generate_dataset")
    builder = process.get_builder()
    builder.structures = parents
    builder.transformations = orm.List(transformations)
    builder.seed = orm.Int(seed)
    builder.deduplicate = orm.Bool(deduplicate)
    builder.max_failure_fraction = orm.Float(max_failure_fraction)
    shared = {"max_concurrent": max_concurrent, "options": options}
    labeller = labeller_inputs(load_labelling_code(code), calculator, pseudo_family,
                               {"parameters": parameters, "structures_per_job": structures_per_job, **shared},
                               {"protocol": protocol, "overrides": overrides, **shared})
    builder._update(to_nodes(process.spec().inputs, labeller))
    error = process.spec().inputs.validate(builder._inputs(prune=True))
    if error is not None:
        raise ValueError(str(error))
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
    """Run ``builder`` in this process; a progress bar polled every ``POLL_SECONDS`` on the runner's event loop.
    Interrupted, the run's labelling processes end with it (:func:`.abandoned.run_in_foreground`)."""
    from aiida.manage import get_manager

    from ..abandoned import run_in_foreground

    runner = get_manager().get_runner()
    process = runner.instantiate_process(builder)
    progress = Progress(process.node)

    def tick() -> None:
        progress.poll()
        if not process.has_terminated():
            runner.loop.call_later(POLL_SECONDS, tick)

    runner.loop.call_later(POLL_SECONDS, tick)
    node = run_in_foreground(process)
    progress.close()
    return node


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
    if report.get("force_free"):
        lines.append(f"  {report['force_free']} of them have every atom where symmetry forbids a force: their labels "
                     "hold no forces (add a rattle step to learn forces)")
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


@click.command()
@click.argument("files", nargs=-1, required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--transformations", "-t", required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="YAML or JSON file: a list of transformations, e.g. [{type: strain, volumetric: [-0.02, 0.02]}].")
@click.option("--index", default=":", show_default=True, help="Frames of each file to take (ase.io.read's index).")
@click.option("--code", default="tace-label@localhost", show_default=True,
              help="The labelling code: a tace-label code (ASE calculator) or a quantumespresso.pw code (pw.x).")
@click.option("--calculator", default=None,
              help=f"tace-label code: import path of the ASE calculator. [default: {DEFAULT_CALCULATOR}]")
@click.option("--parameters", default=None, help="tace-label code: keyword arguments of the calculator, as JSON.")
@click.option("--structures-per-job", type=click.IntRange(min=1), default=None,
              help="tace-label code: structures labelled by one job. [default: 50]")
@click.option("--pseudo-family", default=None,
              help="pw.x code: label of an installed aiida-pseudo family. [default: the protocol's]")
@click.option("--protocol", type=click.Choice(PROTOCOLS), default=None,
              help="pw.x code: aiida-quantumespresso protocol of every SCF. [default: balanced]")
@click.option("--overrides", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help="pw.x code: YAML or JSON file of overrides of the protocol inputs, nested like the PwBaseWorkChain "
                   "inputs, e.g. {pw: {parameters: {SYSTEM: {ecutwfc: 30}}}, kpoints_distance: 0.3}.")
@click.option("--options", default=None,
              help="metadata.options of every labelling job, as JSON, e.g. '{\"withmpi\": false}'.")
@click.option("--seed", default=0, show_default=True, help="Seed of the random displacements and site choices.")
@click.option("--no-deduplicate", is_flag=True, help="Keep symmetry-equivalent variants (exact repeats are dropped).")
@click.option("--max-concurrent", type=click.IntRange(min=1), default=None,
              help="At most this many labelling processes at once. [default: 8 jobs (ASE), 20 SCFs (pw.x)]")
@click.option("--max-failure-fraction", default=0.2, show_default=True,
              help="Exit 401 when more than this fraction of the labels failed (the dataset is kept).")
@click.option("--submit", is_flag=True, help="Hand the run to the daemon (and follow it) instead of running it here.")
def generate(files: tuple[Path, ...], transformations: Path, index: str, code: str, calculator: str | None,
             parameters: str | None, structures_per_job: int | None, pseudo_family: str | None,
             protocol: str | None, overrides: Path | None, options: str | None, seed: int, no_deduplicate: bool,
             max_concurrent: int | None, max_failure_fraction: float, submit: bool) -> None:
    """Generate variants of the structures in FILES (CIF, POSCAR, extxyz, ...), label them, print the summary.

    Runs tace.generate_dataset; run again with the same inputs, it labels only what was not labelled before.
    A tace-label --code labels with an ASE calculator, a quantumespresso.pw --code with pw.x (periodic cells only).
    """
    from aiida import load_profile

    from tace_aiida.broker import ensure_broker

    load_profile()
    try:
        builder = build(read_parents(list(files), index), read_transformation_file(transformations), code=code,
                        calculator=calculator, parameters=read_json_option(parameters, "--parameters"),
                        pseudo_family=pseudo_family, protocol=protocol,
                        overrides=read_settings_file(overrides) if overrides else None,
                        options=read_json_option(options, "--options"), seed=seed, deduplicate=not no_deduplicate,
                        structures_per_job=structures_per_job, max_concurrent=max_concurrent,
                        max_failure_fraction=max_failure_fraction)
    except ValueError as error:
        raise click.ClickException(str(error)) from error
    ensure_broker(workers=2 if submit else 1)
    if submit:
        from aiida.engine import submit as submit_to_daemon

        node = submit_to_daemon(builder)
        click.echo(f"submitted {node.process_label}<{node.pk}>; Ctrl-C stops following it, not the run")
        follow(node)
    else:
        node = run_with_progress(builder)
    click.echo("\n".join(summary_lines(node)))
    if not node.is_finished_ok:
        raise SystemExit(1)
