"""``tace.train``: train one potential (one ensemble member) by running ``tace-train`` in the job folder."""

from __future__ import annotations

from pathlib import Path

import yaml
from aiida import orm
from aiida.common.datastructures import CalcInfo
from aiida.common.folders import Folder

from tace_aiida.calculations.base import TaceCalcJob, single_code_calcinfo
from tace_aiida.data import PotentialData, TrainingSetData
from tace_aiida.model.config import TrainingConfig

#: Settings the CalcJob fills in itself from its inputs.
MANAGED_SETTINGS = {"train_file", "valid_file", "test_file", "init_checkpoint", "output_dir", "seed", "progress_bar",
                    "checkpoint_name", "metrics_name", "restart_name", "resume_from"}
#: Job-folder name prefixes of the shard files of each dataset input.
DATASET_FILES = {"dataset": ("train_file", "train"), "validation_dataset": ("valid_file", "valid"),
                 "test_dataset": ("test_file", "test")}
PARENT_FILE, CONFIG_FILE, RESUME_FILE = "parent.pt", "config.yaml", "resume.pt"
CHECKPOINT_FILE, METRICS_FILE, LOG_FILE, SUMMARY_FILE = "model.pt", "metrics.jsonl", "tace-train.log", "tace-train.out"
RESTART_FILE = "restart.pt"


def shard_copies(dataset: TrainingSetData, prefix: str) -> list[tuple[str, str, str]]:
    """``local_copy_list`` entries that put the files of the dataset's (non-empty) shards in the job
    folder as ``<prefix>_0000.h5``, ``<prefix>_0001.extxyz`` ... in order; frames are not rewritten."""
    return [
        (shard.uuid, shard.filename, f"{prefix}_{index:04d}{Path(shard.filename).suffix}")
        for index, shard in enumerate(dataset.shards)
        if shard.num_structures
    ]


def validate_parameters(value: orm.Dict, _) -> str | None:
    settings = value.get_dict()
    managed = sorted(MANAGED_SETTINGS & set(settings))
    if managed:
        return f"parameters must not set {managed}: the calculation sets them from its inputs"
    try:
        TrainingConfig.from_dict({**settings, "train_file": ["train_0000.h5"]})
    except (ValueError, TypeError) as error:
        return f"invalid training parameters: {error}"
    return None


class TrainCalculation(TaceCalcJob):
    """Train a Cartesian-tensor potential; everything it reads and writes stays in its working directory."""

    @classmethod
    def define(cls, spec):
        super().define(spec)
        spec.input("dataset", valid_type=TrainingSetData, help="Labelled training structures.")
        spec.input("validation_dataset", valid_type=TrainingSetData, required=False,
                   help="Validation structures; without it `valid_fraction` of the training set is held out.")
        spec.input("test_dataset", valid_type=TrainingSetData, required=False,
                   help="Test structures: the saved model's errors on them are reported under `test` in `metrics`.")
        spec.input("parameters", valid_type=orm.Dict, validator=validate_parameters,
                   help="Training settings of `tace-train` (see TrainingConfig): model, loss weights, optimiser, "
                        "epochs, time budget, dtype, device ...")
        spec.input("seed", valid_type=orm.Int, default=lambda: orm.Int(1),
                   help="Random seed: ensemble members differ in it (and with `bootstrap`, in their data).")
        spec.input("parent_potential", valid_type=PotentialData, required=False,
                   help="Fine-tune this potential instead of starting from random weights.")
        spec.input("restart", valid_type=orm.SinglefileData, required=False,
                   help="The `restart` output of an earlier job of this same training (one that reached its wall "
                        "time or was lost): training continues after that job's last completed epoch.")
        spec.inputs["metadata"]["options"]["parser_name"].default = "tace.train"
        spec.output("potential", valid_type=PotentialData, help="The trained potential (best validation epoch).")
        spec.output("metrics", valid_type=orm.Dict, help="Training summary and the metrics of every epoch.")
        spec.output("log", valid_type=orm.SinglefileData, help="The training log.")
        spec.output("restart", valid_type=orm.SinglefileData, required=False,
                    help="The training state after the last completed epoch of a job that did not finish (wall time "
                         "reached, or lost): give it as the `restart` input of the next job to continue.")
        spec.exit_code(311, "ERROR_INVALID_CHECKPOINT", message="The checkpoint cannot be read: {message}")
        spec.exit_code(410, "ERROR_NAN_LOSS", message="The loss became NaN or infinite: {message}")
        spec.exit_code(420, "ERROR_OUT_OF_WALLTIME",
                       message="The job reached its wall time {progress}; a new job can continue from its `restart`.")
        spec.exit_code(430, "ERROR_READ_WRITE",
                       message="Reading or writing a file failed: {message}; running the job again can succeed.")

    def prepare_for_submission(self, folder: Folder) -> CalcInfo:
        settings = {
            **self.inputs.parameters.get_dict(),
            "output_dir": ".",
            "seed": self.inputs.seed.value,
            "progress_bar": False,
        }
        local_copy_list = []
        for name, (setting, prefix) in DATASET_FILES.items():
            if name in self.inputs:
                copies = shard_copies(self.inputs[name], prefix)
                local_copy_list += copies
                settings[setting] = [target for _, _, target in copies]
        if "parent_potential" in self.inputs:
            self.inputs.parent_potential.write_checkpoint(folder.get_abs_path(PARENT_FILE))
            settings["init_checkpoint"] = PARENT_FILE
        if "restart" in self.inputs:
            local_copy_list.append((self.inputs.restart.uuid, self.inputs.restart.filename, RESUME_FILE))
            settings["resume_from"] = RESUME_FILE
        with folder.open(CONFIG_FILE, "w") as handle:
            yaml.safe_dump(settings, handle)
        calcinfo = single_code_calcinfo(
            self.inputs.code.uuid, SUMMARY_FILE, LOG_FILE, [CHECKPOINT_FILE, METRICS_FILE], cmdline_params=[CONFIG_FILE]
        )
        calcinfo.local_copy_list = local_copy_list
        calcinfo.retrieve_temporary_list = [RESTART_FILE]
        return calcinfo
