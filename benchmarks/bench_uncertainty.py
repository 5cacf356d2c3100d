"""Ensemble against single-model (feature) uncertainty: how well each ranks and sizes the force errors.

Trains ``--members`` potentials (seeds 1, 2, ...; the pool benchmark's small model) on ``--train``
frames of 3BPA's ``train_300K``, then, on ``--test`` frames of each test temperature (300, 600, 1200 K):

* ``ensemble``: a frame's deviation is the max over atoms of the members' force spread (eV/Å), its
  error the max over atoms of ``|F_dft - <F>|`` (the ensemble mean's);
* ``features``: each member alone: its deviation is the max over atoms of its own expected force error
  (:mod:`tace_aiida.model.feature_uncertainty`), its error that of its own forces. Rows are the mean
  and spread over the members.

Columns: Spearman rank correlation of the frames' deviations with their errors (what selection needs);
mean deviation over mean error (1 for a well-sized estimate; the ensemble's spread is not meant to be
sized, so the loop can recalibrate it); the miscalibration area of the atoms' errors
(:mod:`tace_aiida.calibration`) with the scale fitted on the 300 K atoms; evaluation time per frame.

    python -m benchmarks.bench_uncertainty            # about 15 min on 2 cores
    python -m benchmarks.bench_uncertainty --quick    # a minute: checks the script works
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import torch
from ase import Atoms
from scipy.stats import spearmanr
from tace_aiida.model.calculator import TACECalculator

from benchmarks.bench_active_learning_3bpa import SETTINGS, train_ensemble
from benchmarks.common import TEMPERATURES_K, load_3bpa_split
from tace_aiida.calibration import fit_scale, miscalibration_area


def predictions(calculator: TACECalculator, frames: list[Atoms]) -> dict[str, np.ndarray | float]:
    """Per-atom force errors ``[n, 3]`` and deviations ``[n]`` (eV/Å), per-frame maxima of both, and ms per frame."""
    errors, sigma, frame_error, frame_deviation = [], [], [], []
    start = time.perf_counter()
    for atoms in frames:
        reference = atoms.get_forces()
        probe = atoms.copy()
        probe.calc = calculator
        error = probe.get_forces() - reference
        errors.append(error)
        sigma.append(calculator.results["forces_std"])
        frame_error.append(np.linalg.norm(error, axis=1).max())
        frame_deviation.append(calculator.results["forces_std"].max())
    return {"errors": np.concatenate(errors), "sigma": np.concatenate(sigma), "frame_error": np.array(frame_error),
            "frame_deviation": np.array(frame_deviation), "ms_per_frame": 1e3 * (time.perf_counter() - start) / len(frames)}


def quality(result: dict, scale: float) -> dict[str, float]:
    """The table's columns for one calculator on one test set."""
    return {"spearman": float(spearmanr(result["frame_deviation"], result["frame_error"])[0]),
            "deviation_over_error": float(result["frame_deviation"].mean() / result["frame_error"].mean()),
            "miscalibration_area": miscalibration_area(result["errors"], result["sigma"], scale),
            "ms_per_frame": result["ms_per_frame"]}


def evaluate(calculators: dict[str, list[TACECalculator]], test: dict[str, list[Atoms]]) -> dict:
    """Rows ``{source: {temperature: {column: [value per calculator]}}}``; the scale is fitted at 300 K."""
    rows: dict = {}
    for source, members in calculators.items():
        rows[source] = {}
        for calculator in members:
            results = {name: predictions(calculator, frames) for name, frames in test.items()}
            scale = fit_scale(results["300K"]["errors"], results["300K"]["sigma"])
            for name, result in results.items():
                for column, value in {**quality(result, scale), "scale_300K": scale}.items():
                    rows[source].setdefault(name, {}).setdefault(column, []).append(value)
    return rows


def format_table(rows: dict) -> str:
    lines = ["| uncertainty | test | Spearman (frames) | deviation / error | miscalibration area | ms / frame |",
             "|---|---|---|---|---|---|"]
    for source, temperatures in rows.items():
        for name, columns in temperatures.items():
            cells = []
            for column in ("spearman", "deviation_over_error", "miscalibration_area", "ms_per_frame"):
                values = np.array(columns[column])
                cells.append(f"{values.mean():.2f}" + (f" ± {values.std():.2f}" if len(values) > 1 else ""))
            lines.append(f"| {source} | {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--train", type=int, default=100, help="training frames of train_300K")
    parser.add_argument("--test", type=int, default=150, help="test frames per temperature")
    parser.add_argument("--members", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=SETTINGS.epochs)
    parser.add_argument("--seed", type=int, default=1, help="which training frames are drawn")
    parser.add_argument("--quick", action="store_true", help="tiny run that only checks the script works")
    parser.add_argument("--output", type=Path, default=Path("bench_uncertainty.json"))
    args = parser.parse_args()
    settings = replace(SETTINGS, epochs=args.epochs)
    if args.quick:
        settings = replace(settings, epochs=2, channels=8)
        args.train, args.test, args.members = 10, 5, 2
    train, _, test, e0s = load_3bpa_split(seed=args.seed)
    rng = np.random.default_rng(args.seed)
    train = [train[i] for i in rng.permutation(len(train))[: args.train]]
    test = {f"{t}K": test[f"{t}K"][: args.test] for t in TEMPERATURES_K}
    print(f"{len(train)} training frames, {args.test} test frames per temperature, {args.members} members, "
          f"{torch.get_num_threads()} threads", flush=True)
    with tempfile.TemporaryDirectory(prefix="bench_uncertainty_") as scratch:
        checkpoints = train_ensemble(train, args.members, settings, Path(scratch), e0s)
        calculators = {"ensemble": [TACECalculator(checkpoints, device="cpu")],
                       "features": [TACECalculator(path, device="cpu", uncertainty="features") for path in checkpoints]}
        rows = evaluate(calculators, test)
    table = format_table(rows)
    print("\n" + table)
    args.output.write_text(json.dumps({"settings": asdict(settings), "arguments": {k: str(v) for k, v in vars(args).items()},
                                       "rows": rows, "table": table}, indent=1))


if __name__ == "__main__":
    main()
