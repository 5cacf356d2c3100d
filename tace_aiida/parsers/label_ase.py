"""Parser of ``tace.label_ase``: the labelled structures and a per-structure report."""

from __future__ import annotations

import io
import json

from aiida import orm
from ase.io import read

from tace_aiida.data import TrainingSetData
from tace_aiida.labelling import runner
from tace_aiida.labelling.failures import describe_failures
from tace_aiida.parsers.base import TaceParser


class AseLabelParser(TaceParser):
    def parse_job(self, **kwargs):
        retrieved = self.retrieved
        names = retrieved.base.repository.list_object_names()
        if runner.REPORT not in names:
            error = retrieved.base.repository.get_object_content("tace-label.err") if "tace-label.err" in names else ""
            if "tace-label:" in error:
                return self.exit_codes.ERROR_INVALID_SETTINGS.format(message=error.strip().splitlines()[-1])
            return self.exit_codes.ERROR_OUTPUT_MISSING.format(missing=runner.REPORT)
        try:
            report = json.loads(retrieved.base.repository.get_object_content(runner.REPORT))
            text = retrieved.base.repository.get_object_content(runner.LABELLED)
            frames = read(io.StringIO(text), index=":", format="extxyz") if text.strip() else []
        except (ValueError, OSError, KeyError, IndexError, FileNotFoundError) as error:
            return self.exit_codes.ERROR_OUTPUT_CORRUPT.format(message=f"{type(error).__name__}: {error}")
        failures = [entry for entry in report if entry["status"] == "failed"]
        self.out("report", orm.Dict({
            "num_structures": len(report),
            "num_labelled": len(report) - len(failures),
            "num_failed": len(failures),
            "failures": [{"index": f["index"], "error": f["error"]} for f in failures],
            "seconds": sum(entry["seconds"] for entry in report),
        }))
        if frames:
            for atoms in frames:
                atoms.info["label_uuid"] = self.node.uuid
            self.out("dataset", TrainingSetData(frames))
        if report and not frames:
            return self.exit_codes.ERROR_ALL_STRUCTURES_FAILED.format(reason=describe_failures(failures))
        return None
