"""AiiDA scheduler plugins of tace-aiida, and the job state that parsers of their jobs can read.

The plugin ``tace.dask`` lives in :mod:`tace_aiida.schedulers.dask`; it is not imported here, so that parsers and the
job watchdog import only the light :mod:`tace_aiida.schedulers.job_state`.
"""

from tace_aiida.schedulers.job_state import (
    STATE_FILENAME,
    DaskJobState,
    Ending,
    JobStatus,
    busy_seconds,
    read_job_state,
)

__all__ = ("STATE_FILENAME", "DaskJobState", "Ending", "JobStatus", "busy_seconds", "read_job_state")
