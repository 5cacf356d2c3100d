"""Conditions as inputs, on the PySCF dataset of O2 in four charge/spin states and H2O in fields.

Trains the same model twice on energies, with and without ``embed_charge``, ``embed_spin`` and
``embed_field``, and prints the test energy RMSE (meV) of each on the O2 frames and on the H2O
frames. Without the conditions the model cannot tell the states of O2 apart (same geometries) nor
see the field, so its error is that of averaging over them.

    python -m benchmarks.bench_conditions                 # a few minutes on one core
    python -m benchmarks.bench_conditions --quick         # checks the script works
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
import torch
from ase import Atoms
from ase.io import read, write
from tace_aiida.model.checkpoint import load_model
from tace_aiida.model.config import TrainingConfig
from tace_aiida.model.data import LabelKeys, frames_to_graphs
from tace_aiida.model.evaluation import evaluate
from tace_aiida.model.training import train

from benchmarks.common import print_and_save

DATA = Path(__file__).resolve().parents[1] / "tests" / "data" / "pyscf_conditions.xyz"
MODEL = {"channels": 16, "radial_mlp": [32, 32], "max_edge_rank": 2, "max_hidden_rank": 1, "correlation": 2}
CONDITIONS = {"embed_charge": True, "embed_spin": True, "embed_field": True}


def energy_rmse(checkpoint: str, frames: list[Atoms]) -> float:
    """Test energy RMSE (eV) of a checkpoint on labelled ``frames``."""
    model, _ = load_model(checkpoint)
    dtype = next(model.parameters()).dtype
    graphs = frames_to_graphs(frames, "test frames", model.config.atomic_numbers, model.config.r_max, LabelKeys(), dtype)
    return evaluate(model, graphs)["energy_rmse"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--test-fraction", type=float, default=0.25)
    parser.add_argument("--epochs", type=int, default=200)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--output", type=Path, default=Path("bench_conditions.json"))
    args = parser.parse_args()
    if args.quick:
        args.epochs = 2
    torch.set_num_threads(1)
    frames = read(args.data, ":")
    order = np.random.default_rng(args.seed).permutation(len(frames))
    cut = int(len(frames) * (1 - args.test_fraction))
    train_frames, test_frames = [frames[i] for i in order[:cut]], [frames[i] for i in order[cut:]]
    groups = {"O2 (4 states)": [a for a in test_frames if a.get_chemical_formula() == "O2"],
              "H2O in a field": [a for a in test_frames if a.get_chemical_formula() == "H2O"]}
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench_conditions_") as scratch:
        folder = Path(scratch)
        write(folder / "train.xyz", train_frames)
        for conditioned in (False, True):
            config = TrainingConfig.from_dict(
                {"train_file": "train.xyz", "valid_fraction": 0.1, "model": MODEL | (CONDITIONS if conditioned else {}),
                 "forces_weight": 0.0, "energy_weight": 1.0, "max_epochs": args.epochs, "patience": args.epochs,
                 "batch_size": 5, "seed": args.seed, "device": "cpu", "output_dir": f"run_{conditioned}",
                 "progress_bar": False},
                base_dir=folder,
            )
            checkpoint = train(config)["checkpoint"]
            row = {"conditions": conditioned}
            for name, members in groups.items():
                row[name] = 1000 * energy_rmse(checkpoint, members)
            rows.append(row)
            print(row, flush=True)
    lines = [f"{len(train_frames)} training and {len(test_frames)} test frames of {args.data.name}, "
             f"{args.epochs} epochs, seed {args.seed}; test energy RMSE (meV)",
             "| model | " + " | ".join(groups) + " |", "|---|" + "---|" * len(groups)]
    for row in rows:
        name = "charge, spin and field embedded" if row["conditions"] else "no conditions"
        lines.append(f"| {name} | " + " | ".join(f"{row[g]:.0f}" for g in groups) + " |")
    print_and_save(lines, args.output, args, model=MODEL, rows=rows)


if __name__ == "__main__":
    main()
