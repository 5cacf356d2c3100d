"""``tace.pw_base``: aiida-quantumespresso's ``PwBaseWorkChain`` that keeps its pw.x job across a daemon crash.

``PwBaseWorkChain`` submits each ``PwCalculation`` in its ``run_process`` step. A daemon that dies after the job is
stored and before the step's checkpoint leaves that job behind: in the ``Created`` state for ever if it was never sent
to a worker, or running beside the second job that the step, run again, submits. This subclass changes nothing else
(inputs, protocols, handlers and outputs are aiida-quantumespresso's); its ``run_process`` keeps the job of the
interrupted attempt if it was sent and replaces it if not (:class:`.KeepsJobsOfInterruptedSteps`), and a forced kill
(``verdi process kill -F``) kills the running pw.x job through its scheduler (:class:`.ForcedKillReachesChildren`).
"""

from __future__ import annotations

from aiida.plugins import WorkflowFactory
from tace_aiida.workflows.killing import ForcedKillReachesChildren
from tace_aiida.workflows.resubmission import KeepsJobsOfInterruptedSteps

PwBaseWorkChain = WorkflowFactory("quantumespresso.pw.base")


class CrashSafePwBaseWorkChain(KeepsJobsOfInterruptedSteps, ForcedKillReachesChildren, PwBaseWorkChain):
    """``PwBaseWorkChain`` whose ``run_process`` step, run again after a daemon crash, submits no second pw.x job, and
    whose forced kill stops its pw.x job."""
