"""Workchains that pass a forced kill (``verdi process kill -F``) on to the processes they started.

aiida-core 2.9 kills the children of a killed process only when the kill was not forced: a forced kill moves the
parent to ``killed`` at once and its children run on, each keeping a core or a GPU until it ends by itself. The
workchains of tace-aiida send the same forced kill to every child that has not ended, so that it reaches the whole
tree down to the CalcJobs, whose forced kill still stops their ``tace.dask`` jobs (:meth:`.TaceCalcJob.kill`).
"""

from __future__ import annotations

from kiwipy.communications import UnroutableError
from plumpy.processes import ConnectionClosed  # type: ignore[attr-defined]


class ForcedKillReachesChildren:
    """Mixin for a :class:`~aiida.engine.WorkChain`: a forced kill is sent to every active child first."""

    def kill(self, msg_text: str | None = None, force_kill: bool = False):
        if force_kill and not self.has_terminated() and self.runner.controller is not None:
            for child in self.node.called:
                if child.is_terminated:
                    continue
                try:
                    self.runner.controller.kill_process(child.pk, msg_text=f"Killed by parent<{self.node.pk}>",
                                                        force_kill=True)
                except (ConnectionClosed, UnroutableError):
                    self.logger.warning(f"the forced kill did not reach child<{child.pk}>")
        return super().kill(msg_text, force_kill)
