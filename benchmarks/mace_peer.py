"""mace-torch peer of the 3BPA benchmark, trained through the ``mace_run_train`` CLI.

Settings not covered by :class:`MatchedSettings` keep the mace-torch 0.3.16
defaults, except ``--model=ScaleShiftMACE`` so that, as tace-aiida's model, it is
shifted by the mean interaction energy per atom and scaled by the RMS training
force: readout MLP 16x0e, Adam weight decay 5e-7, gradient
clipping at 10, ReduceLROnPlateau (factor 0.8, patience from the settings, by
default mace-torch's 50 epochs); with ``stage_two_start``, ``--stage_two`` from
that epoch with its default weights and learning rate, and the stage-two model. As in the
CLI, the returned model is the EMA-weighted checkpoint of the epoch with the
lowest validation loss. With a time budget the CLI is stopped once training has
run that long (model construction excluded) and restarted with
``--restart_latest --max_num_epochs=0`` to export the best checkpoint.
"""

from __future__ import annotations

import re
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

import torch
from ase import Atoms
from ase.io import write
from mace.calculators import MACECalculator

from benchmarks.common import REFERENCE_MODEL, MatchedSettings, TrainedModel, read_e0s

RUN_NAME = "mace"
POLL_S = 1.0
VALIDATION_LINE = re.compile(r"^(\S+ \S+) INFO: (?:Initial|Epoch \d+): head", re.MULTILINE)


def hidden_irreps(channels: int, rank: int) -> str:
    """MACE hidden irreps with ``channels`` copies of every l <= ``rank`` (parity (-1)^l)."""
    return "+".join(f"{channels}x{l}{'eo'[l % 2]}" for l in range(rank + 1))


def mace_cli_args(settings: MatchedSettings, workdir: Path, e0s: dict[int, float]) -> list[str]:
    """Command line for ``mace.cli.run_train`` reproducing ``settings``."""
    if not settings.amsgrad:
        raise ValueError("the mace-torch CLI always uses AMSGrad")
    return [
        sys.executable, "-m", "mace.cli.run_train",
        f"--name={RUN_NAME}",
        f"--work_dir={workdir}",
        f"--seed={settings.seed}",
        "--device=cpu",
        f"--default_dtype={settings.dtype}",
        f"--train_file={workdir / 'train.xyz'}",
        f"--valid_file={workdir / 'valid.xyz'}",
        "--energy_key=REF_energy",
        "--forces_key=REF_forces",
        f"--E0s={e0s}",
        "--model=ScaleShiftMACE",
        f"--num_interactions={settings.num_layers}",
        f"--r_max={settings.r_max}",
        f"--max_ell={settings.max_edge_rank}",
        f"--hidden_irreps={hidden_irreps(settings.channels, settings.hidden_rank)}",
        f"--correlation={settings.correlation}",
        "--radial_type=bessel",
        f"--num_radial_basis={settings.num_bessel}",
        f"--num_cutoff_basis={settings.polynomial_p}",
        f"--radial_MLP={list(settings.radial_mlp)}",
        "--loss=weighted",
        f"--energy_weight={settings.energy_weight}",
        f"--forces_weight={settings.forces_weight}",
        "--optimizer=adam",
        "--amsgrad",
        f"--lr={settings.lr}",
        f"--weight_decay={settings.weight_decay}",
        f"--clip_grad={settings.clip_grad_norm}",
        f"--batch_size={settings.batch_size}",
        f"--valid_batch_size={settings.batch_size}",
        "--ema",
        f"--ema_decay={settings.ema_decay}",
        f"--max_num_epochs={settings.epochs}",
        f"--scheduler_patience={settings.scheduler_patience}",
        *(["--stage_two", f"--start_stage_two={settings.stage_two_start}"] if settings.stage_two_start is not None else []),
        "--eval_interval=1",
        "--keep_checkpoints",
        "--save_cpu",
        "--plot=False",
    ]


def _write_labelled(frames: list[Atoms], path: Path) -> None:
    """Write frames as extxyz with labels under REF_energy (eV) / REF_forces (eV/Å)."""
    labelled = []
    for atoms in frames:
        copy = atoms.copy()
        copy.info["REF_energy"] = atoms.get_potential_energy()
        copy.arrays["REF_forces"] = atoms.get_forces()
        labelled.append(copy)
    write(path, labelled, format="extxyz")


def _validation_times(log_text: str) -> list[datetime]:
    """Timestamps of the initial and of every per-epoch validation line of a MACE log."""
    return [datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S.%f") for m in VALIDATION_LINE.finditer(log_text)]


def _run(args: list[str], workdir: Path, log: Path, budget_s: float | None) -> None:
    """Run the CLI; stop it if training is still going ``budget_s`` s after its initial validation."""
    with open(workdir / "stdout.txt", "a") as out:
        process = subprocess.Popen(args, cwd=workdir, stdout=out, stderr=subprocess.STDOUT)
        training_start = None
        while process.poll() is None:
            time.sleep(POLL_S)
            text = log.read_text() if log.exists() else ""
            if training_start is None and _validation_times(text):
                training_start = time.monotonic()
            over_budget = budget_s is not None and training_start and time.monotonic() - training_start > budget_s
            if over_budget and "Training complete" not in text:
                process.terminate()
                process.wait()
                return
    if process.returncode != 0:
        raise RuntimeError(f"mace_run_train failed, see {workdir / 'stdout.txt'}")


def _drop_partial_checkpoint(checkpoints: Path) -> None:
    """Delete the newest checkpoint if an interrupted save left it unreadable."""
    files = sorted(checkpoints.glob("*.pt"), key=lambda p: p.stat().st_mtime)
    if not files:
        raise RuntimeError("time budget ended before the first epoch completed")
    try:
        torch.load(files[-1], map_location="cpu", weights_only=False)
    except Exception:  # noqa: BLE001 - any failure means a truncated file
        files[-1].unlink()


def load_mace_calculator(model_path: Path, dtype: str) -> MACECalculator:
    """ASE calculator (eV, eV/Å) for a saved MACE model on CPU.

    MACECalculator extends the *class* list ``Calculator.implemented_properties``;
    copying it onto the instance keeps the calculator intact through pickling.
    """
    calculator = MACECalculator(model_paths=str(model_path), device="cpu", default_dtype=dtype)
    calculator.implemented_properties = list(calculator.implemented_properties)
    return calculator


def train_mace(train: list[Atoms], valid: list[Atoms], settings: MatchedSettings, workdir: Path,
               e0s: dict[int, float] | None = None) -> TrainedModel:
    """Train mace-torch with ``settings`` in a new or empty ``workdir``; E0s (eV) ``e0s``, else from 3BPA's
    ``iso_atoms.xyz``."""
    if workdir.exists() and any(workdir.iterdir()):
        raise FileExistsError(f"{workdir} is not empty; mace-torch would reuse its logs and checkpoints")
    workdir.mkdir(parents=True, exist_ok=True)
    _write_labelled(train, workdir / "train.xyz")
    _write_labelled(valid, workdir / "valid.xyz")
    args = mace_cli_args(settings, workdir, e0s if e0s is not None else read_e0s())
    log = workdir / "logs" / f"{RUN_NAME}_run-{settings.seed}.log"
    _run(args, workdir, log, settings.time_budget_s)
    stamps = _validation_times(log.read_text())
    model_path = workdir / f"{RUN_NAME}{'_stagetwo' if settings.stage_two_start is not None else ''}.model"
    if not model_path.exists():  # stopped by the time budget
        _drop_partial_checkpoint(workdir / "checkpoints")
        _run([*args, "--restart_latest", "--max_num_epochs=0"], workdir, log, None)
    epochs_run = len(stamps) - 1
    return TrainedModel(
        name=REFERENCE_MODEL,
        calculator=load_mace_calculator(model_path, settings.dtype),
        seconds_per_epoch=(stamps[-1] - stamps[0]).total_seconds() / epochs_run,
        epochs_run=epochs_run,
    )
