"""What the CalcJobs of tace-aiida share: one console script run in the job folder, and its exit codes.

Exit codes follow aiida-quantumespresso's ranges: 3xx the job failed in a way a restart would repeat
(missing or damaged output, refused settings), 350 the parser itself failed, 4xx a restart can
succeed (the worker died, the loss became NaN, the MD blew up).
"""

from __future__ import annotations

from pathlib import Path

from aiida import orm
from aiida.common.datastructures import CalcInfo, CodeInfo
from aiida.engine import CalcJob

from tace_aiida.schedulers import STATE_FILENAME
from tace_aiida.schedulers.job_state import CANCEL_FILENAME


def single_code_calcinfo(
    code_uuid: str, stdout_name: str, stderr_name: str, retrieve: list[str], cmdline_params: list[str] | None = None
) -> CalcInfo:
    """Run the code once; retrieve ``retrieve``, its stdout/stderr and the dask job state file."""
    codeinfo = CodeInfo()
    codeinfo.code_uuid = code_uuid
    codeinfo.cmdline_params = cmdline_params or []
    codeinfo.stdout_name = stdout_name
    codeinfo.stderr_name = stderr_name
    calcinfo = CalcInfo()
    calcinfo.codes_info = [codeinfo]
    calcinfo.retrieve_list = [*retrieve, stdout_name, stderr_name, STATE_FILENAME]
    return calcinfo


def cancel_file_reaches_job(computer: orm.Computer | None) -> bool:
    """Whether the daemon can leave a job's cancel file itself: on a ``tace.dask`` computer reached through the
    local transport (the daemon and the job share the file system)."""
    return computer is not None and (computer.scheduler_type, computer.transport_type) == ("tace.dask", "core.local")


def cancel_dask_job_directly(node: orm.CalcJobNode) -> bool:
    """Leave the cancel file of ``node``'s ``tace.dask`` job in its working directory, without the scheduler.

    The job's watchdog kills the job's process group when the file appears. Done only where
    :func:`cancel_file_reaches_job`; returns whether the file was written.
    """
    computer, workdir = node.computer, node.get_remote_workdir()
    if computer is None or workdir is None or computer.scheduler_type != "tace.dask":
        return False
    if not cancel_file_reaches_job(computer):
        node.logger.warning(f"forced kill: the job in {workdir} on {computer.label} is not stopped (remote transport)")
        return False
    try:
        (Path(workdir) / CANCEL_FILENAME).touch()
    except OSError as error:
        node.logger.warning(f"forced kill: cannot leave the cancel file in {workdir}: {error}")
        return False
    return True


class TaceCalcJob(CalcJob):
    """A tace-aiida CalcJob: one process on one machine, and the exit codes every tace parser may return."""

    @classmethod
    def define(cls, spec):
        super().define(spec)
        spec.inputs["metadata"]["options"]["resources"].default = {"num_machines": 1, "num_mpiprocs_per_machine": 1}
        spec.exit_code(300, "ERROR_OUTPUT_MISSING", message="{missing} was not written: the program crashed or was killed.")
        spec.exit_code(302, "ERROR_INVALID_SETTINGS", message="The program refused its settings or input: {message}")
        spec.exit_code(303, "ERROR_OUTPUT_CORRUPT", message="The output files are truncated or damaged: {message}")
        spec.exit_code(350, "ERROR_UNEXPECTED_PARSER_EXCEPTION",
                       message="The parser raised an unexpected exception: {exception}")
        spec.exit_code(400, "ERROR_JOB_LOST",
                       message="The job was lost by the scheduler (its worker died); running it again can succeed.")

    def kill(self, msg_text: str | None = None, force_kill: bool = False):
        """A forced kill (``verdi process kill -F``) skips the scheduler in aiida-core; a ``tace.dask`` job is stopped
        all the same, through its cancel file, so that no orphan keeps a core or a GPU."""
        if force_kill and not self.has_terminated():
            cancel_dask_job_directly(self.node)
        return super().kill(msg_text, force_kill)
