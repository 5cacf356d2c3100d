"""Workchains that pass a forced kill (``verdi process kill -F``) on to the processes and scheduler jobs they started.

aiida-core 2.9 kills the children of a killed process only when the kill was not forced: a forced kill moves the
parent to ``killed`` at once and its children run on, each keeping a core or a GPU until it ends by itself. A forced
kill of a CalcJob does not reach its scheduler job either. The workchains of tace-aiida send the same forced kill to
every child that has not ended, so that it reaches the whole tree down to the CalcJobs. A tace CalcJob stops its own
job on a local ``tace.dask`` computer (:meth:`.TaceCalcJob.kill`); the job of any other CalcJob child (``pw.x`` through
``PwCalculation``, a labelling job on ``core.direct`` or Slurm) is killed here, through its computer's scheduler, as a
kill without ``-F`` would.
"""

from __future__ import annotations

from aiida import orm
from kiwipy.communications import UnroutableError
from plumpy.processes import ConnectionClosed  # type: ignore[attr-defined]

from tace_aiida.abandoned import kill_scheduler_job, stops_its_own_job


class ForcedKillReachesChildren:
    """Mixin for a :class:`~aiida.engine.WorkChain`: a forced kill is sent to every active child first, and the
    scheduler job of an active CalcJob child that would not stop it is killed."""

    def kill(self, msg_text: str | None = None, force_kill: bool = False):
        if force_kill and not self.has_terminated():
            for child in self.node.called:
                if child.is_terminated:
                    continue
                self._send_forced_kill(child)
                if isinstance(child, orm.CalcJobNode) and not stops_its_own_job(child):
                    kill_scheduler_job(child)
        return super().kill(msg_text, force_kill)

    def _send_forced_kill(self, child: orm.ProcessNode) -> None:
        if self.runner.controller is None:
            return
        try:
            self.runner.controller.kill_process(child.pk, msg_text=f"Killed by parent<{self.node.pk}>", force_kill=True)
        except (ConnectionClosed, UnroutableError):
            self.logger.warning(f"the forced kill did not reach child<{child.pk}>")
