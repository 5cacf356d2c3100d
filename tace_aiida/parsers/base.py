"""What every tace-aiida parser checks first: whether the scheduler lost the job."""

from __future__ import annotations

from aiida.parsers import Parser

from tace_aiida.schedulers import STATE_FILENAME, read_job_state


class TaceParser(Parser):
    """Parser base: ``job_was_lost()`` is True when a ``tace.dask`` job never finished on its worker."""

    def job_was_lost(self) -> bool:
        if STATE_FILENAME not in self.retrieved.base.repository.list_object_names():
            return False
        return read_job_state(self.retrieved).lost
