"""What every tace-aiida parser does first: lost jobs, and parser exceptions turned into an exit code."""

from __future__ import annotations

from aiida.engine import ExitCode
from aiida.parsers import Parser

from tace_aiida.schedulers import STATE_FILENAME, read_job_state


class TaceParser(Parser):
    """Parser base: a lost ``tace.dask`` job is ``ERROR_JOB_LOST`` (400); an exception raised while parsing
    is ``ERROR_UNEXPECTED_PARSER_EXCEPTION`` (350), never an excepted process. Subclasses write ``parse_job``."""

    def parse(self, **kwargs) -> ExitCode | None:
        try:
            if self.job_was_lost():
                self.keep_partial_results(kwargs.get("retrieved_temporary_folder"))
                return self.exit_codes.ERROR_JOB_LOST
            return self.parse_job(**kwargs)
        except Exception as exception:  # a parser bug must leave a finished node with its files, not an exception
            self.logger.exception("the parser raised an unexpected exception")
            return self.exit_codes.ERROR_UNEXPECTED_PARSER_EXCEPTION.format(
                exception=f"{type(exception).__name__}: {exception}")

    def parse_job(self, **kwargs) -> ExitCode | None:
        """Parse the retrieved files of a job that ran; return an exit code or None."""
        raise NotImplementedError

    def keep_partial_results(self, retrieved_temporary_folder: str | None) -> None:
        """Attach what a job that did not end can be continued from (nothing by default)."""

    def job_was_lost(self) -> bool:
        if STATE_FILENAME not in self.retrieved.base.repository.list_object_names():
            return False
        return read_job_state(self.retrieved).lost
