"""Parser of ``tace.md``: the trajectory with its per-frame uncertainty, and why the run stopped."""

from __future__ import annotations

import io
import json
import zipfile

import numpy as np
from aiida import orm
from ase.data import chemical_symbols

from tace_aiida.model import md
from tace_aiida.model.structure_conditions import CONDITION_INFO
from tace_aiida.parsers.base import TaceParser

PER_FRAME_ARRAYS = ("energies", "forces", "energy_std", "forces_std", "max_force_std", "descriptors", "temperatures")
#: The conditions each frame ran with (``tace-md`` before they were recorded wrote none).
CONDITION_ARRAYS = CONDITION_INFO


class MDParser(TaceParser):
    def parse_job(self, **kwargs):
        repository = self.retrieved.base.repository
        names = repository.list_object_names()
        if md.TRAJECTORY not in names or md.RESULT not in names:
            error = repository.get_object_content("tace-md.err") if "tace-md.err" in names else ""
            if "tace-md:" in error:
                return self.exit_codes.ERROR_INVALID_SETTINGS.format(message=error.strip().splitlines()[-1])
            return self.exit_codes.ERROR_OUTPUT_MISSING.format(missing=md.TRAJECTORY)
        try:
            arrays = dict(np.load(io.BytesIO(repository.get_object_content(md.TRAJECTORY, mode="rb"))))
            result = json.loads(repository.get_object_content(md.RESULT))
        except (ValueError, OSError, EOFError, zipfile.BadZipFile) as error:
            return self.exit_codes.ERROR_OUTPUT_CORRUPT.format(message=f"{type(error).__name__}: {error}")
        missing = sorted({"numbers", "positions", "steps", "cells", "pbc", *PER_FRAME_ARRAYS} - set(arrays))
        if missing or "stop_reason" not in result:
            what = f"{md.TRAJECTORY} lacks {missing}" if missing else f"{md.RESULT} lacks 'stop_reason'"
            return self.exit_codes.ERROR_OUTPUT_CORRUPT.format(message=what)
        trajectory = orm.TrajectoryData()
        trajectory.set_trajectory(
            symbols=[chemical_symbols[z] for z in arrays["numbers"]],
            positions=arrays["positions"],
            stepids=arrays["steps"],
            cells=arrays["cells"],
            pbc=[bool(x) for x in arrays["pbc"]],
        )
        for name in PER_FRAME_ARRAYS + tuple(name for name in CONDITION_ARRAYS if name in arrays):
            trajectory.set_array(name, arrays[name])
        self.out("trajectory", trajectory)
        self.out("result", orm.Dict(result))
        if result["stop_reason"] == "unphysical":
            return self.exit_codes.ERROR_UNPHYSICAL.format(steps=result["steps_done"])
        return None
