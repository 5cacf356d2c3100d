"""What the CalcJobs of tace-aiida share: one console script run in the job folder."""

from __future__ import annotations

from aiida.common.datastructures import CalcInfo, CodeInfo

from tace_aiida.schedulers import STATE_FILENAME


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
