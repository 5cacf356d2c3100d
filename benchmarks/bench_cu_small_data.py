"""A model option in the main job's regime: 4 members with the ``fast`` protocol's settings on a few EMT Cu frames.

A change that helps on 3BPA's 450 frames may hurt the loop's first iterations, which train on a
handful of structures. This script trains, for each of ``--options`` (model settings, JSON), four
members (seeds 1-4) on the same ``--frames`` EMT-labelled frames: the example's six starting cells
(perfect, vacancy, strained; each twice, displaced by up to 0.15 Å) plus random frames of 300, 600
and 900 K EMT MD, drawn by ``--draw``. It prints, on the fresh MD frames of
:mod:`benchmarks.bench_main_job_ensemble` at 600, 900 and 1200 K, the ensemble mean's force RMSE
(meV/Å) and the spread over the error (mean largest atomic deviation over mean largest atomic error).

    python -m benchmarks.bench_cu_small_data --frames 19 --draw 1 \
        --options '{"bessel_trainable": true}' '{"bessel_trainable": false}'      # about 10 min on 1 core
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import numpy as np
from ase import Atoms
from ase.calculators.emt import EMT
from ase.io import write
from tace_aiida.model.calculator import TACECalculator
from tace_aiida.model.config import TrainingConfig
from tace_aiida.model.training import train

from benchmarks.bench_main_job_ensemble import emt_frames, example_cells, forces_of, rmse_mev

#: The ``fast`` protocol's training (``workflows/protocols/active_learning.yaml``), E0 of Cu set to 0 eV.
FAST_TRAINING = dict(max_epochs=80, patience=20, batch_size=2, valid_fraction=0.1, forces_weight=10.0,
                     stress_weight=10.0, dtype="float32", progress_bar=False, atomic_energies={29: 0.0})
FAST_MODEL = dict(channels=16, max_edge_rank=2, max_hidden_rank=1, correlation=2, r_max=4.5, radial_mlp=[32, 32])
TEST_TEMPERATURES_K = (600, 900, 1200)


def training_frames(count: int, draw: int) -> list[Atoms]:
    """The example's six displaced starting cells plus ``count - 6`` random 300-900 K MD frames, EMT-labelled."""
    rng = np.random.default_rng(draw)
    frames = []
    for cell in example_cells():
        for _ in range(2):
            displaced = cell.copy()
            displaced.positions += rng.uniform(-0.15, 0.15, displaced.positions.shape)
            frames.append(displaced)
    md = [atoms for temperature in (300, 600, 900)
          for atoms, _ in emt_frames(temperature, seed=1000 * draw + temperature, frames_per_cell=4)]
    frames += [md[i] for i in rng.choice(len(md), count - len(frames), replace=False)]
    for atoms in frames:
        atoms.calc = EMT()
        atoms.get_forces()
    return frames


def ensemble_row(train_file: Path, options: dict, workdir: Path,
                 test: dict[int, list[tuple[Atoms, np.ndarray]]]) -> dict[int, tuple[float, float]]:
    """Temperature -> (force RMSE of the 4-member mean, meV/Å; spread over error) for one model option."""
    members = []
    for seed in range(1, 5):
        config = TrainingConfig.from_dict({**FAST_TRAINING, "train_file": str(train_file), "seed": seed,
                                           "model": {**FAST_MODEL, **options}, "output_dir": str(workdir / f"m{seed}")})
        members.append(train(config)["checkpoint"])
    ensemble = TACECalculator([str(member) for member in members], device="cpu")
    row = {}
    for temperature, data in test.items():
        errors, deviations, largest_errors = [], [], []
        for atoms, reference in data:
            forces, results = forces_of(ensemble, atoms)
            errors.append(forces - reference)
            deviations.append(results["max_force_std"])
            largest_errors.append(float(np.linalg.norm(forces - reference, axis=-1).max()))
        row[temperature] = (rmse_mev(errors), float(np.mean(deviations) / np.mean(largest_errors)))
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=19, help="training frames, at least 7")
    parser.add_argument("--draw", type=int, default=1, help="seed of the MD frames drawn")
    parser.add_argument("--options", nargs="+", type=json.loads, default=[{}], help="model settings, JSON each")
    args = parser.parse_args()
    test = {temperature: emt_frames(temperature, seed=temperature) for temperature in TEST_TEMPERATURES_K}
    with tempfile.TemporaryDirectory() as scratch:
        workdir = Path(scratch)
        write(workdir / "train.xyz", training_frames(args.frames, args.draw), format="extxyz")
        for index, options in enumerate(args.options):
            row = ensemble_row(workdir / "train.xyz", options, workdir / f"option{index}", test)
            cells = [f"{t} K: {rmse:.1f} meV/Å, spread/error {ratio:.2f}" for t, (rmse, ratio) in row.items()]
            print(f"{args.frames} frames, draw {args.draw}, {json.dumps(options)} | " + " | ".join(cells), flush=True)


if __name__ == "__main__":
    main()
