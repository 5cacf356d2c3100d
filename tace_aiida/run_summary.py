"""What a finished ``tace.active_learning`` run produced: a few lines of text and its files."""

from __future__ import annotations

from pathlib import Path

from aiida import orm

from .plotting import plot_run


def iteration_line(entry: dict) -> str:
    """One iteration of the run's report in words (validation and, with a test set, test force RMSE in meV/Å)."""
    rmse = entry.get("valid_forces_rmse")
    error = f"{rmse * 1000:.0f} meV/Å" if rmse is not None else "-"
    test = entry.get("test_forces_rmse")
    return (f"iteration {entry['iteration']}: {entry['dataset_size']} structures, accurate "
            f"{entry['accurate_fraction']:.2f}, selected {entry['selected']}, label failures "
            f"{entry['label_failures']}, validation force RMSE {error}"
            + (f", test {test * 1000:.0f} meV/Å" if test is not None else ""))


def summarise(node: orm.WorkflowNode) -> list[str]:
    """How the run ended, then one line per iteration; for a run with a ``report`` output."""
    report = node.outputs.report.get_dict()
    dataset = f", {node.outputs.dataset.num_structures} structures in the final dataset" if "dataset" in node.outputs else ""
    reason, iterations = report["stop_reason"], len(report["iterations"])
    ending = (f"{reason.rstrip('.')} (after {iterations} iterations)" if reason == node.exit_message  # stopped early
              else f"{reason} after {iterations} iterations")
    header = f"{node.process_label}<{node.pk}> {node.process_state.value}, exit status {node.exit_status}: {ending}{dataset}"
    return [header] + [f"  {iteration_line(entry)}" for entry in report["iterations"]]


def ended_without_report(node: orm.WorkflowNode) -> str:
    """How a run that has no ``report`` (killed, excepted, or refused at its start) ended, in one line, with the
    command that continues from what it made."""
    status = f", exit status {node.exit_status}" if node.exit_status is not None else ""
    reason = node.exit_message or node.process_status or "no report"
    line = f"{node.process_label}<{node.pk}> {node.process_state.value}{status}: {reason}"
    if node.is_killed or node.is_excepted:
        line += f"; `tace-aiida learn --continue-from {node.pk}` continues from the last dataset and ensemble it made"
    return line


def export_run(node: orm.WorkflowNode, folder: Path) -> list[Path]:
    """Write the final ensemble's checkpoints (``member<i>.pt``) and the run's plots into ``folder``.

    Member checkpoints left in ``folder`` by an earlier export of a larger ensemble are removed (and named), so that
    ``member*.pt`` is this run's ensemble and no other's; the earlier run's potentials stay in the database.
    """
    folder.mkdir(parents=True, exist_ok=True)
    members = [potential.write_checkpoint(folder / f"member{index}.pt")
               for index, potential in enumerate(node.outputs.ensemble.values())]
    for stale in sorted(set(folder.glob("member*.pt")) - set(members)):
        stale.unlink()
        print(f"removed: {stale} (not a member of {node.process_label}<{node.pk}>; an earlier export's)")
    return members + plot_run(node, folder)


def run_or_submit(builder, folder: Path, arguments: list[str]) -> None:
    """What the examples do with their builder: :func:`execute` it, submitted to the daemon with ``--submit``."""
    unknown = [argument for argument in arguments if argument != "--submit"]
    if unknown:
        raise SystemExit(f"unknown arguments {unknown}; the only option is --submit (run on the daemon)")
    execute(builder, folder, submit="--submit" in arguments)


def execute(builder, folder: Path, submit: bool = False) -> orm.WorkflowNode:
    """Run ``builder`` here, or submit it to the daemon; return its node.

    Run: wait, then print :func:`summarise` (the exit message when the run ended without a report) and write
    :func:`export_run` into ``folder`` when it has an ensemble. Interrupted (Ctrl-C, SIGTERM), the run is killed and
    the processes it started here end with it, their scheduler jobs stopped (:func:`.abandoned.run_in_foreground`).
    Submitted: print the PK and how to follow the run; ``tace-aiida summary PK`` does the rest once it has ended.
    """
    from aiida.engine import submit as submit_to_daemon
    from aiida.manage import get_manager

    from tace_aiida.abandoned import run_in_foreground
    from tace_aiida.broker import ensure_broker

    ensure_broker(workers=2 if submit else 1)
    if submit:
        node = submit_to_daemon(builder)
        print(f"submitted {node.process_label}<{node.pk}> to the daemon")
        print(f"  follow it:   verdi process status {node.pk}  |  verdi process report {node.pk}")
        print(f"  when ended:  tace-aiida summary {node.pk} --output {folder}")
        return node
    node = run_in_foreground(get_manager().get_runner().instantiate_process(builder))
    if "report" not in node.outputs:
        print(ended_without_report(node))
        return node
    print("\n".join(summarise(node)))
    if "ensemble" in node.outputs:
        for path in export_run(node, folder):
            print(f"written: {path}")
    return node
