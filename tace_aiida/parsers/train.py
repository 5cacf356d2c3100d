"""Parser of ``tace.train``: the potential, the metrics and the log."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

from aiida import orm

from tace_aiida.calculations.train import CHECKPOINT_FILE, LOG_FILE, METRICS_FILE, SUMMARY_FILE
from tace_aiida.data import PotentialData
from tace_aiida.model.checkpoint import CheckpointError
from tace_aiida.parsers.base import TaceParser


class TrainParser(TaceParser):
    def parse(self, **kwargs):
        if self.job_was_lost():
            return self.exit_codes.ERROR_JOB_LOST
        repository = self.retrieved.base.repository
        names = repository.list_object_names()
        log = repository.get_object_content(LOG_FILE) if LOG_FILE in names else ""
        if log:
            self.out("log", orm.SinglefileData.from_string(log, filename=LOG_FILE))
        last_line = log.strip().splitlines()[-1] if log.strip() else ""
        if "loss became" in log:
            return self.exit_codes.ERROR_NAN_LOSS.format(message=last_line)
        if CHECKPOINT_FILE not in names:
            if last_line.startswith("tace-train:"):
                return self.exit_codes.ERROR_INVALID_SETTINGS.format(message=last_line)
            return self.exit_codes.ERROR_OUTPUT_MISSING
        with tempfile.TemporaryDirectory() as folder:
            path = Path(folder) / CHECKPOINT_FILE
            path.write_bytes(repository.get_object_content(CHECKPOINT_FILE, mode="rb"))
            try:
                potential = PotentialData(path)
            except CheckpointError as error:
                return self.exit_codes.ERROR_INVALID_CHECKPOINT.format(message=str(error))
        self.out("potential", potential)
        epochs = [json.loads(line) for line in repository.get_object_content(METRICS_FILE).splitlines() if line]
        summary_lines = repository.get_object_content(SUMMARY_FILE).strip().splitlines() if SUMMARY_FILE in names else []
        summary = json.loads(summary_lines[-1]) if summary_lines else {}
        summary.pop("checkpoint", None)
        summary.pop("metrics_file", None)
        self.out("metrics", orm.Dict({**summary, "epochs": epochs}))
        return None
