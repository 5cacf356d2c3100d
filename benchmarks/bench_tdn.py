"""The TDN fast path (``tensor_decomposition: true``) against the exact model and mace-torch.

Three parts, each its own command:

* ``equivariance``: for CP ranks R, the largest relative fit error of the default architecture's
  products and the rotation/reflection error of energy (relative) and forces (relative to the
  largest force) of a random-weight float64 model on 3BPA frames (a minute).
* ``speed``: exact, TDN at R = 63 (the default 7 L**2), 40 and 28, and mace-torch at the matched
  settings of :mod:`benchmarks.bench_3bpa`: each trained 2 epochs (on 40 3BPA frames, and on 18
  EMT-labelled 32-atom Cu cells), then timed on a 27-atom molecule and a rattled 256-atom fcc Cu cell
  (42 neighbours per atom), float32, 1 thread, best of ``--rounds`` alternating rounds (15 minutes).
* ``accuracy --seed N``: exact, TDN (frozen factors) and TDN (trained factors) at the matched settings,
  trained on ``--train-frames`` frames of ``train_300K`` for ``--epochs``, test RMSE on the
  mixed-temperature frames by temperature (about 20 minutes per seed on one core); ``--variants``
  picks among them and ``exact, mean messages`` (the exact model with ``message_normalization: mean``, the
  default before 2026-12-03).

    python -m benchmarks.bench_tdn equivariance
    python -m benchmarks.bench_tdn speed
    python -m benchmarks.bench_tdn accuracy --seed 1
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
import torch
from ase.build import bulk
from ase.io import read
from tace_aiida.model.decomposition import default_cp_rank, fit_cp_factors
from tace_aiida.model.equivariance import rotation_errors
from tace_aiida.model.potential import CartesianTensorPotential, ModelConfig

from benchmarks.bench_dense_metal import isolated_energy, labelled_copper
from benchmarks.common import (
    DATA_DIR,
    MatchedSettings,
    energy_force_rmse,
    inference_ms_per_structure,
    load_3bpa_split,
    print_and_save,
)
from benchmarks.mace_peer import train_mace
from benchmarks.tace_peer import train_tace

#: The model variants compared, as extra model settings.
VARIANTS = {
    "exact": {},
    "TDN R=63": {"tensor_decomposition": True},
    "TDN R=40": {"tensor_decomposition": True, "cp_rank": 40},
    "TDN R=28": {"tensor_decomposition": True, "cp_rank": 28},
}
ACCURACY_VARIANTS = {
    "exact": {},
    "TDN (frozen factors)": {"tensor_decomposition": True},
    "TDN (trained factors)": {"tensor_decomposition": True, "cp_trainable": True},
    "exact, mean messages": {"message_normalization": "mean"},
}
#: The products of the default architecture (edge rank 3, hidden rank 1, correlation 3): interaction
#: from node rank 0 and 1, intermediate and final product-basis orders.
DEFAULT_PRODUCTS = [(0, 3, 3), (1, 3, 3), (3, 3, 3), (3, 3, 1), (3, 3, 0)]


def equivariance(args) -> None:
    frames = read(DATA_DIR / "train_300K.xyz", ":5")
    lines = ["| CP rank R | largest relative fit error | energy error (relative) | force error (relative to max force) |",
             "|---|---|---|---|"]
    rows = []
    torch.set_default_dtype(torch.float64)
    for cp_rank in args.ranks:
        fit = max(fit_cp_factors(*ranks, cp_rank)[3] for ranks in DEFAULT_PRODUCTS)
        torch.manual_seed(args.seed)
        model = CartesianTensorPotential(ModelConfig(
            atomic_numbers=[1, 6, 7, 8], atomic_energies=[0.0] * 4, avg_num_neighbors=14.0, scale=1.0,
            tensor_decomposition=True, cp_rank=cp_rank,
        ))
        energy, forces = rotation_errors(model, frames, rotations=6)
        rows.append({"cp_rank": cp_rank, "fit_error": fit, "energy_error": energy, "forces_error": forces})
        lines.append(f"| {cp_rank} | {fit:.1e} | {energy:.1e} | {forces:.1e} |")
    print_and_save(lines, args.output, args, rows=rows)


def speed(args) -> None:
    torch.set_num_threads(1)
    settings = MatchedSettings(epochs=2)
    train, valid, test, e0s = load_3bpa_split()
    molecule = test["300K"][0]
    copper = labelled_copper(20, repeat=2, seed=0)
    cell = bulk("Cu", "fcc", a=3.61, cubic=True).repeat(4)
    cell.rattle(0.05, seed=123)
    with tempfile.TemporaryDirectory() as scratch:
        models = {}
        for name, options in VARIANTS.items():
            folder = Path(scratch) / name.replace(" ", "_").replace("=", "")
            models[name] = (train_tace(train[:40], valid[:10], settings, folder / "3bpa", e0s, options),
                            train_tace(copper[2:], copper[:2], settings, folder / "cu", isolated_energy(), options))
        models["mace-torch"] = (train_mace(train[:40], valid[:10], settings, Path(scratch) / "mace_3bpa", e0s),
                                train_mace(copper[2:], copper[:2], settings, Path(scratch) / "mace_cu", isolated_energy()))
        rounds: dict[str, list[tuple[float, float]]] = {name: [] for name in models}
        for _ in range(args.rounds):
            for name, (on_molecule, on_copper) in models.items():
                rounds[name].append((inference_ms_per_structure(on_molecule.calculator, [molecule], repeats=20),
                                     inference_ms_per_structure(on_copper.calculator, [cell], repeats=3, warmup=1)))
        epoch_seconds = {name: pair[0].seconds_per_epoch for name, pair in models.items()}
    best = {name: (min(r[0] for r in runs), min(r[1] for r in runs)) for name, runs in rounds.items()}
    lines = ["| model | 27 atoms (ms) | 256-atom Cu (ms) | s/epoch, 40 frames | 27 atoms / exact | 256 Cu / exact "
             "| 27 atoms / mace-torch | 256 Cu / mace-torch |", "|---|---|---|---|---|---|---|---|"]
    for name, (small, dense) in best.items():
        exact, mace = best["exact"], best["mace-torch"]
        lines.append(f"| {name} | {small:.1f} | {dense:.0f} | {epoch_seconds[name]:.2f} | {small / exact[0]:.2f}× "
                     f"| {dense / exact[1]:.2f}× | {small / mace[0]:.2f}× | {dense / mace[1]:.2f}× |")
    print_and_save(lines, args.output, args, rounds=rounds, epoch_seconds=epoch_seconds)


def accuracy(args) -> None:
    torch.set_num_threads(1)
    # tace-aiida only: its own training defaults
    settings = MatchedSettings(epochs=args.epochs, seed=args.seed, scheduler_patience=5, clip_grad_norm=None, weight_decay=0.0,
                               fixed_bessel_frequencies=False)
    train, valid, test, e0s = load_3bpa_split(seed=args.seed)
    rng = np.random.default_rng(args.seed)
    train = [train[i] for i in rng.permutation(len(train))[: args.train_frames]]
    rows = {}
    with tempfile.TemporaryDirectory() as scratch:
        for name in args.variants:
            options = ACCURACY_VARIANTS[name]
            folder = Path(scratch) / name.replace(" ", "_").replace("(", "").replace(")", "")
            model = train_tace(train, valid, settings, folder, e0s, options)
            rows[name] = {"s_per_epoch": model.seconds_per_epoch}
            for temperature, frames in test.items():
                errors = energy_force_rmse(model.calculator, frames)
                rows[name][f"E {temperature}"] = errors["energy_rmse_meV"]
                rows[name][f"F {temperature}"] = errors["forces_rmse_meV_per_A"]
    columns = [key for key in next(iter(rows.values())) if key != "s_per_epoch"]
    lines = ["| model | " + " | ".join(f"{c} ({'meV' if c[0] == 'E' else 'meV/Å'})" for c in columns)
             + " | s/epoch |", "|---" * (len(columns) + 2) + "|"]
    for name, row in rows.items():
        lines.append(f"| {name} | " + " | ".join(f"{row[c]:.1f}" for c in columns) + f" | {row['s_per_epoch']:.1f} |")
    print_and_save(lines, args.output, args, rows=rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("part", choices=["equivariance", "speed", "accuracy"])
    parser.add_argument("--ranks", type=int, nargs="+", default=[8, 16, 28, 40, default_cp_rank(3)])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--train-frames", type=int, default=200)
    parser.add_argument("--epochs", type=int, default=25)
    parser.add_argument("--variants", nargs="+", default=list(ACCURACY_VARIANTS)[:3], choices=list(ACCURACY_VARIANTS))
    parser.add_argument("--output", type=Path, default=None)
    args = parser.parse_args()
    args.output = args.output or Path(f"bench_tdn_{args.part}_seed{args.seed}.json")
    {"equivariance": equivariance, "speed": speed, "accuracy": accuracy}[args.part](args)


if __name__ == "__main__":
    main()
