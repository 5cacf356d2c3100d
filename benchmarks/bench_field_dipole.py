"""Dipoles in a field: the dipole head against the field derivative ``-dE/dF`` (``field_dipole``).

Trains, on the same frames of ``--data`` (made by :mod:`benchmarks.pyscf_field_dataset`: H2O and NH3
in random fields, PBE/def2-SVP energies, forces, dipoles, polarizabilities and Born effective
charges), four models that differ only in how they see the field, give the dipole and are trained:

* ``no field``: ``dipole: true``, the field not an input (what a model without conditions can do);
* ``field + dipole head``: ``embed_field: true, dipole: true``;
* ``field, dipole = -dE/dF``: ``embed_field: true, field_dipole: true``, trained on energies, forces
  and dipoles only: its polarizability and Born charges (second field derivatives) are predictions
  it was never trained on;
* ``... + polarizability, Born labels``: the same model with those labels in the loss as well.

Printed: test RMSE of energy (meV/atom), forces (meV/Å) and dipole components (e Å), and for the
``-dE/dF`` models of the polarizability components (Å^3) and the Born charges (e), beside the RMS of
the reference values, for one seed (the split and the initial weights); run several seeds and compare.

    python -m benchmarks.bench_field_dipole --seed 1        # about 12 min on one core
    python -m benchmarks.bench_field_dipole --quick         # checks the script works
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

DATA = Path(__file__).resolve().parents[1] / "tests" / "data" / "pyscf_field.xyz"
BASE = {"channels": 16, "radial_mlp": [32, 32], "max_edge_rank": 2, "max_hidden_rank": 1, "correlation": 2}
NO_RESPONSE = {"polarizability_weight": 0.0, "born_charges_weight": 0.0}

#: name -> (model settings, loss weights beside forces 10 and dipole 100).
VARIANTS = {
    "no field": ({"dipole": True}, NO_RESPONSE),
    "field + dipole head": ({"embed_field": True, "dipole": True}, NO_RESPONSE),
    "field, dipole = -dE/dF": ({"embed_field": True, "field_dipole": True}, NO_RESPONSE),
    "... + polarizability, Born labels": ({"embed_field": True, "field_dipole": True},
                                          {"polarizability_weight": 10.0, "born_charges_weight": 100.0}),
}


def reference_rms(frames: list[Atoms]) -> dict[str, float]:
    """RMS of the polarizability (Å^3) and Born charge (e) components of ``frames``."""
    alphas = np.concatenate([np.ravel(atoms.info["polarizability"]) for atoms in frames])
    born = np.concatenate([atoms.calc.results["born_effective_charges"].ravel() for atoms in frames])
    return {"polarizability": float(np.sqrt(np.mean(alphas**2))), "born_charges": float(np.sqrt(np.mean(born**2)))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--train", type=int, default=60)
    parser.add_argument("--test", type=int, default=40)
    parser.add_argument("--epochs", type=int, default=150)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--output", type=Path, default=Path("bench_field_dipole.json"))
    args = parser.parse_args()
    if args.quick:
        args.train, args.test, args.epochs = 10, 5, 2
    frames = read(args.data, ":")
    order = np.random.default_rng(args.seed).permutation(len(frames))
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench_field_dipole_") as scratch:
        folder = Path(scratch)
        write(folder / "train.xyz", [frames[i] for i in order[: args.train]])
        test_frames = [frames[i] for i in order[-args.test:]]
        write(folder / "test.xyz", test_frames)
        for name, (settings, weights) in VARIANTS.items():
            config = TrainingConfig.from_dict(
                {"train_file": "train.xyz", "test_file": "test.xyz", "valid_fraction": 0.1, "model": BASE | settings,
                 "forces_weight": 10.0, "dipole_weight": 100.0, **weights, "seed": args.seed,
                 "max_epochs": args.epochs, "patience": args.epochs, "batch_size": 5, "device": "cpu",
                 "output_dir": f"run_{len(rows)}", "progress_bar": False},
                base_dir=folder,
            )
            summary = train(config)
            test = summary["test"]
            rows.append({"model": name, "energy_meV_per_atom": 1000 * test["energy_per_atom_rmse"],
                         "forces_meV_per_A": 1000 * test["forces_rmse"], "dipole_rmse": test["dipole_rmse"]})
            if settings.get("field_dipole"):
                rows[-1].update(polarizability_rmse=test["polarizability_rmse"], born_charges_rmse=test["born_charges_rmse"])
            print(rows[-1], flush=True)
    references = reference_rms(test_frames)
    lines = [f"{len(frames)} PySCF frames in fields ({args.data.name}): train {args.train}, test {args.test}, "
             f"{args.epochs} epochs, seed {args.seed}",
             "| model | energy (meV/atom) | forces (meV/Å) | dipole (e Å) | polarizability (Å³) | Born charges (e) |",
             "|---|---|---|---|---|---|"]
    for row in rows:
        response = (f"{row['polarizability_rmse']:.3f} | {row['born_charges_rmse']:.3f}" if "born_charges_rmse" in row
                    else "- | -")
        lines.append(f"| {row['model']} | {row['energy_meV_per_atom']:.1f} | {row['forces_meV_per_A']:.0f} | "
                     f"{row['dipole_rmse']:.4f} | {response} |")
    lines.append(f"reference RMS on the test frames: polarizability {references['polarizability']:.3f} Å³, "
                 f"Born charges {references['born_charges']:.3f} e")
    print_and_save(lines, args.output, args, base_model=BASE, variants=VARIANTS, rows=rows, reference_rms=references)


if __name__ == "__main__":
    main()
