"""The job that a restart workchain's ``run_process`` step stored before the daemon died (no job runs)."""

from __future__ import annotations

from aiida import orm
from aiida.common import LinkType
from aiida.engine import BaseRestartWorkChain


def job_of_an_interrupted_step(process: BaseRestartWorkChain, computer: orm.Computer, process_type: str,
                               checkpoint: str | None) -> orm.CalcJobNode:
    """A ``Created`` CalcJob node of ``process_type``, called by ``process`` as ``iteration_01`` (the label of the job
    of its first ``run_process``), with ``checkpoint`` if its launch task was sent, without one if it never was; and
    the entry for its handlers that ``run_process`` adds to ``process`` after submitting it."""
    process.node.base.extras.set(process._considered_handlers_extra, [[]])
    node = orm.CalcJobNode(computer=computer, process_type=process_type)
    node.set_process_state("created")
    if checkpoint is not None:
        node.set_checkpoint(checkpoint)
    node.base.links.add_incoming(process.node, link_type=LinkType.CALL_CALC, link_label="iteration_01")
    return node.store()


def handler_entries(process: BaseRestartWorkChain) -> list[list]:
    """The entries of the extra in which ``process`` records the handlers it considered, one per iteration."""
    return process.node.base.extras.get(process._considered_handlers_extra, [])


def iteration_01_jobs(process: BaseRestartWorkChain) -> list[orm.ProcessNode]:
    """The jobs ``process`` called as ``iteration_01``."""
    return process.node.base.links.get_outgoing(link_label_filter="iteration_01").all_nodes()
