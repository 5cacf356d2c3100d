"""Learning curve of the dipole and polarizability heads on the PySCF dataset.

Trains one model with ``dipole: true`` and ``polarizability: true`` on the first N frames (several N)
of ``--data`` (made by :mod:`benchmarks.pyscf_tensor_dataset`) and tests it on the last ``--test``
frames. Printed per N: test RMSE of dipole components (e Å), of polarizability components (Å^3),
of energy (meV/atom) and forces (meV/Å), and for reference the RMSE of predicting the training mean.

    python -m benchmarks.bench_tensor_outputs                 # about 10 min on one core
    python -m benchmarks.bench_tensor_outputs --quick         # checks the script works
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
from ase import Atoms
from ase.io import read, write
from tace_aiida.model.config import TrainingConfig
from tace_aiida.model.training import train

from benchmarks.common import print_and_save

DATA = Path(__file__).resolve().parents[1] / "tests" / "data" / "pyscf_tensors.xyz"
MODEL = {"channels": 16, "radial_mlp": [32, 32], "max_edge_rank": 2, "max_hidden_rank": 1, "correlation": 2,
         "dipole": True, "polarizability": True}


def tensors(frames: list[Atoms]) -> tuple[np.ndarray, np.ndarray]:
    """Dipoles ``[n, 3]`` (e Å) and polarizabilities ``[n, 3, 3]`` (Å^3) of labelled frames."""
    return (np.array([a.get_dipole_moment() for a in frames]),
            np.array([np.reshape(a.info["polarizability"], (3, 3)) for a in frames]))


def mean_baseline(train_frames: list[Atoms], test_frames: list[Atoms]) -> tuple[float, float]:
    """RMSE (dipole, polarizability) of predicting the training frames' mean tensor."""
    (train_mu, train_alpha), (test_mu, test_alpha) = tensors(train_frames), tensors(test_frames)
    return (float(np.sqrt(((test_mu - train_mu.mean(0)) ** 2).mean())),
            float(np.sqrt(((test_alpha - train_alpha.mean(0)) ** 2).mean())))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--sizes", type=int, nargs="+", default=[10, 20, 40, 70])
    parser.add_argument("--test", type=int, default=30)
    parser.add_argument("--epochs", type=int, default=100)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--output", type=Path, default=Path("bench_tensor_outputs.json"))
    args = parser.parse_args()
    if args.quick:
        args.sizes, args.test, args.epochs = [5], 5, 2
    frames = read(args.data, ":")
    rng = np.random.default_rng(args.seed)
    order = rng.permutation(len(frames))
    test_frames = [frames[i] for i in order[-args.test:]]
    pool = [frames[i] for i in order[: -args.test]]
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench_tensor_outputs_") as scratch:
        folder = Path(scratch)
        write(folder / "test.xyz", test_frames)
        for size in args.sizes:
            write(folder / f"train_{size}.xyz", pool[:size])
            config = TrainingConfig.from_dict(
                {"train_file": f"train_{size}.xyz", "test_file": "test.xyz", "valid_fraction": 0.1, "model": MODEL,
                 "forces_weight": 10.0, "dipole_weight": 100.0, "polarizability_weight": 10.0, "seed": args.seed,
                 "max_epochs": args.epochs, "patience": args.epochs, "batch_size": 5, "device": "cpu",
                 "output_dir": f"run_{size}", "progress_bar": False},
                base_dir=folder,
            )
            test = train(config)["test"]
            mu_mean, alpha_mean = mean_baseline(pool[:size], test_frames)
            rows.append({"train": size, "dipole_rmse": test["dipole_rmse"], "dipole_mean_rmse": mu_mean,
                         "polarizability_rmse": test["polarizability_rmse"], "polarizability_mean_rmse": alpha_mean,
                         "energy_meV_per_atom": 1000 * test["energy_per_atom_rmse"],
                         "forces_meV_per_A": 1000 * test["forces_rmse"]})
            print(rows[-1], flush=True)
    lines = [f"{len(frames)} PySCF frames ({args.data.name}), test on {args.test}, {args.epochs} epochs, seed {args.seed}",
             "| training frames | dipole RMSE (e Å) | polarizability RMSE (Å³) | energy (meV/atom) | forces (meV/Å) |",
             "|---|---|---|---|---|"]
    for row in rows:
        lines.append(f"| {row['train']} | {row['dipole_rmse']:.4f} (mean: {row['dipole_mean_rmse']:.3f}) | "
                     f"{row['polarizability_rmse']:.4f} (mean: {row['polarizability_mean_rmse']:.3f}) | "
                     f"{row['energy_meV_per_atom']:.1f} | {row['forces_meV_per_A']:.0f} |")
    print_and_save(lines, args.output, args, model=MODEL, rows=rows)


if __name__ == "__main__":
    main()
