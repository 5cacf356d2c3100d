"""``tace-aiida learn``: the active-learning loop from the command line.

Reads the starting structures from files (or starts from a labelled dataset, or continues a finished run), builds
``tace.active_learning`` from a protocol with the overrides of a YAML or JSON file, runs it here or submits it to the
daemon, and prints what :mod:`tace_aiida.run_summary` prints after the examples. As for ``tace-aiida generate``, the
labelling code chooses the labeller: a ``quantumespresso.pw`` code labels with pw.x, a ``tace-label`` code with an ASE
calculator.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click
from aiida import orm
from aiida.cmdline.utils import echo

from .continuation import continuation_of, progress_of
from .generation.cli import DEFAULT_CALCULATOR, load_labelling_code, read_json_option, read_parents, read_settings_file
from .profile import DASK_COMPUTER, LOCAL_COMPUTER

PROTOCOLS = ("fast", "balanced", "stringent")  # the loop's (workflows/protocols/active_learning.yaml)
LOOP_PROCESS_TYPE = "aiida.workflows:tace.active_learning"


def load_dataset(identifier: str, option: str = "--dataset") -> orm.Data:
    """The ``tace.dataset`` node of PK or UUID ``identifier`` given to ``option`` (the ``dataset`` output of a
    generation or a loop, or one stored by ``verdi data tace.dataset import``)."""
    from aiida.common.exceptions import MultipleObjectsError, NotExistent

    from .data.dataset import TrainingSetData

    try:
        node = orm.load_node(identifier)
    except (NotExistent, MultipleObjectsError) as error:
        raise ValueError(f"{option} {identifier!r}: {error}") from error
    if not isinstance(node, TrainingSetData):
        raise ValueError(f"{option} {identifier!r} is a {type(node).__name__}<{node.pk}>, not a TrainingSetData "
                         "(the `dataset` output of `tace-aiida generate` or of an active-learning run, or "
                         "`verdi data tace.dataset import`)")
    return node


def ended_run(identifier: str, option: str = "--continue-from") -> orm.WorkflowNode:
    """The ended (finished, killed or excepted) ``tace.active_learning`` run of PK or UUID ``identifier``, given to
    ``option`` (named in the ``ValueError`` for anything else)."""
    from aiida.common.exceptions import MultipleObjectsError, NotExistent

    try:
        node = orm.load_node(identifier)
    except (NotExistent, MultipleObjectsError) as error:
        raise ValueError(f"{option} {identifier!r}: {error}") from error
    if node.process_type != LOOP_PROCESS_TYPE:
        raise ValueError(f"{option} {identifier!r} is {node.__class__.__name__}<{node.pk}> "
                         f"({node.process_type or 'no process'}), not an active-learning run")
    if not node.is_terminated:
        raise ValueError(f"{option} {identifier!r}: the run has not ended yet ({node.process_state.value}, "
                         f"{progress_of(node)}; `verdi process report {node.pk}` follows it)")
    return node


def build(parents: dict[str, orm.StructureData] | None, *, protocol: str | None = None,
          overrides: dict | None = None, code: str = f"tace-label@{LOCAL_COMPUTER}", calculator: str | None = None,
          parameters: dict | None = None, pseudo_family: str | None = None,
          train_code: str = f"tace-train@{DASK_COMPUTER}", md_code: str = f"tace-md@{DASK_COMPUTER}",
          dataset: str | None = None, continue_from: str | None = None, test_dataset: str | None = None,
          rattle: float | None = None, rattle_copies: int = 3, label: str | None = None):
    """The builder of ``tace.active_learning`` for the command's options, checked by the workchain's validators.

    ``parents``: the starting structures (None or empty: frames of the dataset start the exploration);
    ``dataset``: PK or UUID of an initial ``TrainingSetData``; ``continue_from``: PK or UUID of an ended run whose
    dataset and ensemble start this one (members warm-started; :func:`.continuation.continuation_of`);
    ``test_dataset``: PK or UUID of labelled structures every member is scored on, in each iteration's report;
    ``rattle`` (Å): label ``rattle_copies`` copies of each structure with Gaussian displacements of that standard
    deviation beside it (the loop's ``transformations``);
    ``overrides`` are merged into the protocol's inputs as ``get_builder_from_protocol`` merges them;
    ``parameters`` are the ASE calculator's keyword arguments.
    """
    from aiida.common.exceptions import MultipleObjectsError, NotExistent
    from aiida.plugins import WorkflowFactory

    if continue_from is not None and dataset is not None:
        raise ValueError("give --dataset or --continue-from, not both: a continued run starts from its dataset")
    if not parents and dataset is None and continue_from is None:
        raise ValueError("nothing to start from: give structure FILES, --dataset PK or --continue-from PK")
    codes = {"label": load_labelling_code(code)}
    for role, name in (("train", train_code), ("md", md_code)):
        try:
            codes[role] = orm.load_code(name)
        except (NotExistent, MultipleObjectsError) as error:
            raise ValueError(f"--{role}-code {name!r}: {error} (see `verdi code list`)") from error
    if parameters is not None and code_is_pw(codes["label"]):
        raise ValueError(f"--parameters: only for a tace-label code; code {code!r} labels with pw.x")
    if calculator is None and not code_is_pw(codes["label"]):
        calculator = DEFAULT_CALCULATOR
    if rattle is not None:
        if "transformations" in (overrides or {}):
            raise ValueError("give --rattle or `transformations` in --overrides, not both")
        overrides = {**(overrides or {}), "transformations": [
            {"type": "rattle", "amplitudes": [rattle], "copies": rattle_copies, "keep_parents": True}]}
    process = WorkflowFactory("tace.active_learning")
    builder = process.get_builder_from_protocol(codes, parents or None, protocol, overrides,
                                                calculator=calculator, pseudo_family=pseudo_family)
    if parameters is not None:
        builder.label_ase.parameters = orm.Dict(parameters)
    if dataset is not None:
        builder.dataset = load_dataset(dataset)
    if continue_from is not None:
        run = ended_run(continue_from)
        try:
            continuation = continuation_of(run)
        except ValueError as error:
            raise ValueError(f"--continue-from {continue_from!r}: {error}") from error
        builder.dataset = continuation.dataset
        if continuation.ensemble:
            builder.initial_ensemble = continuation.ensemble
        if continuation.note:
            echo.echo_report(f"--continue-from {continue_from}: {continuation.note}")
    if test_dataset is not None:
        builder.test_dataset = load_dataset(test_dataset, "--test-dataset")
    if label:
        builder.metadata.label = label
    spec = process.spec().inputs
    error = spec.validate(spec.pre_process(builder._inputs(prune=True)))  # defaults filled, as at submission
    if error is not None:
        raise ValueError(error.message)
    return builder


def code_is_pw(code: orm.AbstractCode) -> bool:
    """Whether ``code`` is a pw.x code (it labels through ``label_qe``)."""
    from tace_aiida.workflows.labelling.qe import PW_PLUGIN

    return code.default_calc_job_plugin == PW_PLUGIN


def uses_local_dask(builder) -> bool:
    """Whether the training or MD code runs on the local dask cluster's computer (``tace-aiida setup``'s)."""
    return any(namespace.code.computer.label == DASK_COMPUTER for namespace in (builder.train, builder.md))


def read_overrides(path: Path | None) -> dict[str, Any] | None:
    """The overrides in a YAML or JSON file: a mapping, nested like the workchain's inputs."""
    if path is None:
        return None
    overrides = read_settings_file(path)
    if not isinstance(overrides, dict):
        raise ValueError(f"{path}: overrides must be a mapping such as {{selection: {{max_selected: 10}}}}, "
                         f"not {type(overrides).__name__}")
    return overrides


@click.command()
@click.argument("files", nargs=-1, type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--index", default=":", show_default=True, help="Frames of each file to take (ase.io.read's index).")
@click.option("--dataset", default=None,
              help="PK or UUID of a labelled TrainingSetData to start from: the `dataset` of `tace-aiida generate`, "
                   "or one stored by `verdi data tace.dataset import FILES`.")
@click.option("--continue-from", default=None,
              help="PK or UUID of an ended active-learning run: its dataset and ensemble start this run (of a killed "
                   "or excepted run, the last dataset it merged and the members of its last trained iteration).")
@click.option("--test-dataset", default=None,
              help="PK or UUID of a labelled TrainingSetData (e.g. from `verdi data tace.dataset import`) that every "
                   "member is scored on: the test force RMSE of each iteration is reported and plotted.")
@click.option("--protocol", type=click.Choice(PROTOCOLS), default=None,
              help="Settings of the loop (workflows/protocols/active_learning.yaml). [default: balanced]")
@click.option("--overrides", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help="YAML or JSON file merged into the protocol's inputs, e.g. {selection: {max_selected: 10}, "
                   "exploration: [{temperatures: [600], steps: 500}]} (lists are replaced whole).")
@click.option("--code", default=f"tace-label@{LOCAL_COMPUTER}", show_default=True,
              help="The labelling code: a tace-label code (ASE calculator) or a quantumespresso.pw code (pw.x).")
@click.option("--calculator", default=None,
              help=f"tace-label code: import path of the ASE calculator. [default: {DEFAULT_CALCULATOR}]")
@click.option("--parameters", default=None, help="tace-label code: keyword arguments of the calculator, as JSON.")
@click.option("--pseudo-family", default=None,
              help="pw.x code: label of an installed aiida-pseudo family. [default: the pw protocol's]")
@click.option("--train-code", default=f"tace-train@{DASK_COMPUTER}", show_default=True,
              help="The tace-train code of the ensemble's members.")
@click.option("--md-code", default=f"tace-md@{DASK_COMPUTER}", show_default=True, help="The tace-md code of the MD runs.")
@click.option("--rattle", type=click.FloatRange(min=0.0, min_open=True), default=None,
              help="Label, beside each structure, copies of it with Gaussian displacements of this standard deviation "
                   "(Å, e.g. 0.05): ideal crystals (most CIF files) have no forces to learn from.")
@click.option("--rattle-copies", type=click.IntRange(min=1), default=3, show_default=True,
              help="Rattled copies of each structure (with --rattle).")
@click.option("--label", default=None, help="Label of the run (shown by `verdi process list`).")
@click.option("--output", "-o", default="al_run", show_default=True, type=click.Path(file_okay=False, path_type=Path),
              help="Folder for the final ensemble's checkpoints and the plots, once the run has ended here.")
@click.option("--submit", is_flag=True, help="Hand the run to the daemon and return; `tace-aiida summary PK` follows up.")
def learn(files: tuple[Path, ...], index: str, dataset: str | None, continue_from: str | None,
          test_dataset: str | None, protocol: str | None,
          overrides: Path | None, code: str, calculator: str | None, parameters: str | None,
          pseudo_family: str | None, train_code: str, md_code: str, rattle: float | None, rattle_copies: int,
          label: str | None, output: Path, submit: bool) -> None:
    """Learn a potential by active learning from the structures in FILES (CIF, POSCAR, extxyz, ...).

    Runs tace.active_learning: labels the structures, trains an ensemble, explores with MD, labels what the ensemble
    is unsure about, and repeats; then prints one line per iteration and writes the final ensemble and plots.
    """
    from aiida import load_profile

    from .dask_cluster import ensure_local_cluster
    from .run_summary import execute

    load_profile()
    try:
        builder = build(read_parents(list(files), index) if files else None, protocol=protocol,
                        overrides=read_overrides(overrides), code=code, calculator=calculator,
                        parameters=read_json_option(parameters, "--parameters"), pseudo_family=pseudo_family,
                        train_code=train_code, md_code=md_code, dataset=dataset, continue_from=continue_from,
                        test_dataset=test_dataset, rattle=rattle, rattle_copies=rattle_copies, label=label)
    except ValueError as error:
        raise click.ClickException(str(error)) from error
    if uses_local_dask(builder):
        ensure_local_cluster()
    node = execute(builder, output, submit=submit)
    if not submit and not node.is_finished_ok:
        raise SystemExit(1)
