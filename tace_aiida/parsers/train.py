"""Parser of ``tace.train``: the potential, the metrics and the log."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

from aiida import orm
from aiida.engine import CalcJob

from tace_aiida.calculations.train import CHECKPOINT_FILE, LOG_FILE, METRICS_FILE, RESTART_FILE, SUMMARY_FILE
from tace_aiida.data import PotentialData
from tace_aiida.model.checkpoint import CheckpointError
from tace_aiida.model.restart import RestartError, restart_epoch
from tace_aiida.parsers.base import TaceParser

OUT_OF_WALLTIME = CalcJob.exit_codes.ERROR_SCHEDULER_OUT_OF_WALLTIME.status


class TrainParser(TaceParser):
    """The potential, the metrics and the log; a failure from the structured last line of ``tace-train``'s output."""

    ERRORS = {"nan_loss": "ERROR_NAN_LOSS", "invalid_settings": "ERROR_INVALID_SETTINGS",
              "invalid_input": "ERROR_INVALID_SETTINGS", "io_error": "ERROR_READ_WRITE"}

    def parse_job(self, retrieved_temporary_folder: str | None = None, **kwargs):
        repository = self.retrieved.base.repository
        names = repository.list_object_names()
        log = repository.get_object_content(LOG_FILE) if LOG_FILE in names else ""
        if log:
            self.out("log", orm.SinglefileData.from_string(log, filename=LOG_FILE))
        if self.node.exit_status == OUT_OF_WALLTIME:
            epoch = self.keep_partial_results(retrieved_temporary_folder)
            progress = "before its first epoch ended" if epoch is None else f"after epoch {epoch}"
            return self.exit_codes.ERROR_OUT_OF_WALLTIME.format(progress=progress)
        try:
            summary = self._last_json_line(repository.get_object_content(SUMMARY_FILE)) if SUMMARY_FILE in names else {}
        except ValueError as error:
            return self.exit_codes.ERROR_OUTPUT_CORRUPT.format(message=f"{SUMMARY_FILE}: {error}")
        if "error" in summary:
            exit_code = getattr(self.exit_codes, self.ERRORS.get(summary["error"], "ERROR_INVALID_SETTINGS"))
            return exit_code.format(message=summary.get("message", ""))
        if CHECKPOINT_FILE not in names:
            return self.exit_codes.ERROR_OUTPUT_MISSING.format(missing=CHECKPOINT_FILE)
        with tempfile.TemporaryDirectory() as folder:
            path = Path(folder) / CHECKPOINT_FILE
            path.write_bytes(repository.get_object_content(CHECKPOINT_FILE, mode="rb"))
            try:
                potential = PotentialData(path)
            except CheckpointError as error:
                return self.exit_codes.ERROR_INVALID_CHECKPOINT.format(message=str(error))
        try:
            epochs = [json.loads(line) for line in repository.get_object_content(METRICS_FILE).splitlines() if line]
        except (ValueError, FileNotFoundError, OSError) as error:
            return self.exit_codes.ERROR_OUTPUT_CORRUPT.format(message=f"{METRICS_FILE}: {error}")
        self.out("potential", potential)
        summary.pop("checkpoint", None)
        summary.pop("metrics_file", None)
        self.out("metrics", orm.Dict({**summary, "epochs": epochs}))
        return None

    def keep_partial_results(self, retrieved_temporary_folder: str | None) -> int | None:
        """Attach the restart file of a job that did not end, if it is readable; return its last epoch."""
        if retrieved_temporary_folder is None or not (Path(retrieved_temporary_folder) / RESTART_FILE).is_file():
            return None
        path = Path(retrieved_temporary_folder) / RESTART_FILE
        try:
            epoch = restart_epoch(path)
        except RestartError as error:
            self.logger.warning(f"the restart file is not kept: {error}")
            return None
        self.out("restart", orm.SinglefileData(path, filename=RESTART_FILE))
        return epoch

    @staticmethod
    def _last_json_line(text: str) -> dict:
        """The JSON object on the last non-empty line of ``text`` ({} when there is none)."""
        lines = text.strip().splitlines()
        return json.loads(lines[-1]) if lines else {}
