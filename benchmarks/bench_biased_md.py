"""Uncertainty-driven MD against plain MD at the same cost: which finds the frames the ensemble is unsure of?

An ensemble of ``--members`` small potentials (the pool benchmark's settings) is trained on the first
``--train`` frames of 3BPA's ``train_300K``. From one 300 K test frame, Langevin MD runs ``--steps`` steps of
0.5 fs, a frame saved every 10, for each of ``--seeds`` seeds in three ways:

* ``plain 300 K`` and ``plain 600 K``: the ensemble's mean forces;
* ``biased 300 K``: the same plus the uncertainty bias (:mod:`tace_aiida.model.bias`) of strength
  ``--strength`` eV and a width set from the data: ``--width-factor`` times the median energy spread per
  sqrt(atom) of the plain 300 K frames, so the bias is steep where plain MD ends.

Each row: the saved frames' median and maximum model deviation (max over atoms of the force standard
deviation, eV/Å), the fraction of frames above the 95th percentile of plain 300 K's deviations, the
closest interatomic distance seen (Å, to spot unphysical frames), the mean temperature (K), the stop reason
(a run stops above 2 eV/Å of deviation or below 0.6 Å) and seconds per step. Every run costs the same
number of ensemble evaluations; the bias needs no extra derivative.

    python -m benchmarks.bench_biased_md                       # about 15 minutes on 2 cores
    python -m benchmarks.bench_biased_md --quick               # a minute: checks the script works
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
from ase import Atoms
from ase.io import read
from tace_aiida.model import md
from tace_aiida.model.calculator import TACECalculator

from benchmarks.bench_active_learning_3bpa import SETTINGS, train_ensemble
from benchmarks.common import DATA_DIR, read_e0s

MODES = {"plain 300 K": (300.0, False), "plain 600 K": (600.0, False), "biased 300 K": (300.0, True)}


def run(start, checkpoints: list[str], temperature: float, seed: int, steps: int, bias: tuple[float, float] | None):
    """Trajectory arrays, summary and seconds per step of one Langevin run (0.5 fs, a frame every 10 steps)."""
    settings = md.MDSettings(checkpoints=checkpoints, temperature=temperature, timestep=0.5, steps=steps,
                             save_interval=10, max_force_std=2.0, min_distance=0.6, seed=seed, device="cpu",
                             bias_strength=bias[0] if bias else 0.0, bias_width=bias[1] if bias else 0.05)
    calculator = TACECalculator(checkpoints, device="cpu", bias=settings.bias)
    started = time.perf_counter()
    arrays, summary = md.run_md(start, settings, calculator)
    return arrays, summary, (time.perf_counter() - started) / max(summary["steps_done"], 1)


def mean_and_spread(rows: list[dict], key: str, digits: int) -> str:
    """``mean ± standard deviation`` of ``key`` over the seeds' rows."""
    values = np.array([row[key] for row in rows])
    return f"{values.mean():.{digits}f} ± {values.std():.{digits}f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--train", type=int, default=50)
    parser.add_argument("--members", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=40)
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--strength", type=float, default=1.0, help="bias strength A (eV)")
    parser.add_argument("--width-factor", type=float, default=2.0)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--output", type=Path, default=Path("bench_biased_md.json"))
    args = parser.parse_args()
    if args.quick:
        args.train, args.members, args.epochs, args.steps, args.seeds = 10, 2, 2, 40, 1
    frames = read(DATA_DIR / "train_300K.xyz", ":")
    start = frames[-1]
    settings = replace(SETTINGS, epochs=args.epochs)
    rows: dict[str, list[dict]] = {mode: [] for mode in MODES}
    with tempfile.TemporaryDirectory(prefix="bench_biased_md_") as scratch:
        checkpoints = [str(path) for path in train_ensemble(frames[: args.train], args.members, settings,
                                                             Path(scratch), read_e0s())]
        trajectories = {}
        width = None
        for mode, (temperature, biased) in MODES.items():  # plain 300 K first: it sets the width
            for seed in range(1, args.seeds + 1):
                bias = (args.strength, width) if biased else None
                arrays, summary, seconds = run(start, checkpoints, temperature, seed, args.steps, bias)
                trajectories.setdefault(mode, []).append(arrays)
                rows[mode].append({"seed": seed, "stop_reason": summary["stop_reason"], "frames": summary["frames"],
                                   "seconds_per_step": seconds})
            if mode == "plain 300 K":
                spread = np.concatenate([a["energy_std"] for a in trajectories[mode]]) / np.sqrt(len(start))
                width = args.width_factor * float(np.median(spread))
    reference = np.percentile(np.concatenate([a["max_force_std"] for a in trajectories["plain 300 K"]]), 95)
    for mode, runs in trajectories.items():
        for row, arrays in zip(rows[mode], runs, strict=True):
            deviation = arrays["max_force_std"]
            row.update(median_deviation=float(np.median(deviation)), max_deviation=float(deviation.max()),
                       above_reference=float((deviation > reference).mean()),
                       closest_distance=min(md.closest_distance(Atoms(arrays["numbers"], positions=positions))
                                            for positions in arrays["positions"]),
                       mean_temperature=float(arrays["temperatures"].mean()))
    lines = [f"reference: 95th percentile of plain 300 K deviations = {reference:.3f} eV/Å; bias width "
             f"{width:.4f} eV/sqrt(atom), strength {args.strength} eV",
             "| run | median dev (eV/Å) | max dev (eV/Å) | frames above reference | closest (Å) | T (K) | s/step | stops |",
             "|---|---|---|---|---|---|---|---|"]
    for mode, mode_rows in rows.items():
        cells = [mean_and_spread(mode_rows, key, digits) for key, digits in (
            ("median_deviation", 3), ("max_deviation", 3), ("above_reference", 2), ("closest_distance", 2),
            ("mean_temperature", 0), ("seconds_per_step", 4))]
        stops = ", ".join(sorted({row["stop_reason"] for row in mode_rows}))
        lines.append(f"| {mode} | " + " | ".join(cells) + f" | {stops} |")
    table = "\n".join(lines)
    print(table)
    args.output.write_text(json.dumps({"arguments": {k: str(v) for k, v in vars(args).items()}, "width": width,
                                       "reference": float(reference), "rows": rows, "table": table}, indent=1))


if __name__ == "__main__":
    main()
