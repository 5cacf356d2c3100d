"""Dipoles in a field: the dipole head against the field derivative ``-dE/dF`` (``field_dipole``).

Trains, on the same frames of ``--data`` (made by :mod:`benchmarks.pyscf_field_dataset`: H2O and NH3
in random fields, PBE/def2-SVP energies, forces and dipoles), three models that differ only in how
they see the field and give the dipole:

* ``no field``: ``dipole: true``, the field not an input (what a model without conditions can do);
* ``field + dipole head``: ``embed_field: true, dipole: true``;
* ``field, dipole = -dE/dF``: ``embed_field: true, field_dipole: true``.

Printed: test RMSE of energy (meV/atom), forces (meV/Å) and dipole components (e Å), for one seed
(the split and the initial weights); run several seeds and compare. For the ``-dE/dF`` model also
the second field derivatives, which it was never trained on, against PySCF's finite-field ones on
``--response`` test frames: RMSE of the polarizability components (Å^3) and of the Born effective
charges (e), beside the RMS of the reference values.

    python -m benchmarks.bench_field_dipole --seed 1        # about 5 min on one core
    python -m benchmarks.bench_field_dipole --quick         # checks the script works
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
from ase import Atoms
from ase.io import read, write
from tace_aiida.model.calculator import TACECalculator
from tace_aiida.model.config import TrainingConfig
from tace_aiida.model.training import train

from benchmarks.common import print_and_save
from benchmarks.pyscf_field_dataset import SETTINGS
from tace_aiida.labelling.pyscf_calculator import PySCFCalculator

DATA = Path(__file__).resolve().parents[1] / "tests" / "data" / "pyscf_field.xyz"
BASE = {"channels": 16, "radial_mlp": [32, 32], "max_edge_rank": 2, "max_hidden_rank": 1, "correlation": 2}
RESPONSE = ("polarizability", "born_effective_charges")


def response_errors(checkpoint: str, frames: list[Atoms]) -> dict[str, float]:
    """RMSE of the model's polarizability (Å^3) and Born charges (e) against PySCF's, and the references' RMS."""
    errors: dict[str, list] = {name: [] for name in RESPONSE}
    references: dict[str, list] = {name: [] for name in RESPONSE}
    calculator = TACECalculator([checkpoint], device="cpu")
    for frame in frames:
        reference = frame.copy()
        reference.calc = PySCFCalculator(**SETTINGS, electric_field=frame.info["electric_field"])
        predicted = frame.copy()
        predicted.calc = calculator
        for name in RESPONSE:
            expected = reference.calc.get_property(name, reference)
            errors[name].append((calculator.get_property(name, predicted) - expected).ravel())
            references[name].append(expected.ravel())
    rms = {name: float(np.sqrt(np.mean(np.concatenate(values) ** 2))) for name, values in errors.items()}
    scale = {f"{name}_reference_rms": float(np.sqrt(np.mean(np.concatenate(values) ** 2)))
             for name, values in references.items()}
    return {f"{name}_rmse": value for name, value in rms.items()} | scale


VARIANTS = {
    "no field": {"dipole": True},
    "field + dipole head": {"embed_field": True, "dipole": True},
    "field, dipole = -dE/dF": {"embed_field": True, "field_dipole": True},
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--train", type=int, default=60)
    parser.add_argument("--test", type=int, default=40)
    parser.add_argument("--epochs", type=int, default=150)
    parser.add_argument("--response", type=int, default=8, help="test frames for the second field derivatives")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--output", type=Path, default=Path("bench_field_dipole.json"))
    args = parser.parse_args()
    if args.quick:
        args.train, args.test, args.epochs, args.response = 10, 5, 2, 1
    frames = read(args.data, ":")
    order = np.random.default_rng(args.seed).permutation(len(frames))
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench_field_dipole_") as scratch:
        folder = Path(scratch)
        write(folder / "train.xyz", [frames[i] for i in order[: args.train]])
        test_frames = [frames[i] for i in order[-args.test:]]
        write(folder / "test.xyz", test_frames)
        for name, settings in VARIANTS.items():
            config = TrainingConfig.from_dict(
                {"train_file": "train.xyz", "test_file": "test.xyz", "valid_fraction": 0.1,
                 "model": BASE | settings, "forces_weight": 10.0, "dipole_weight": 100.0, "seed": args.seed,
                 "max_epochs": args.epochs, "patience": args.epochs, "batch_size": 5, "device": "cpu",
                 "output_dir": f"run_{len(rows)}", "progress_bar": False},
                base_dir=folder,
            )
            summary = train(config)
            test = summary["test"]
            rows.append({"model": name, "energy_meV_per_atom": 1000 * test["energy_per_atom_rmse"],
                         "forces_meV_per_A": 1000 * test["forces_rmse"], "dipole_rmse": test["dipole_rmse"]})
            if settings.get("field_dipole"):
                rows[-1].update(response_errors(summary["checkpoint"], test_frames[: args.response]))
            print(rows[-1], flush=True)
    lines = [f"{len(frames)} PySCF frames in fields ({args.data.name}): train {args.train}, test {args.test}, "
             f"{args.epochs} epochs, seed {args.seed}",
             "| model | energy (meV/atom) | forces (meV/Å) | dipole (e Å) |", "|---|---|---|---|"]
    lines += [f"| {row['model']} | {row['energy_meV_per_atom']:.1f} | {row['forces_meV_per_A']:.0f} | "
              f"{row['dipole_rmse']:.4f} |" for row in rows]
    for row in rows:
        if "born_effective_charges_rmse" in row:
            lines.append(f"{row['model']}, never trained on them, on {args.response} test frames: polarizability RMSE "
                         f"{row['polarizability_rmse']:.3f} Å³ (reference RMS {row['polarizability_reference_rms']:.3f}), "
                         f"Born charges RMSE {row['born_effective_charges_rmse']:.3f} e "
                         f"(reference RMS {row['born_effective_charges_reference_rms']:.3f})")
    print_and_save(lines, args.output, args, base_model=BASE, variants=VARIANTS, rows=rows)


if __name__ == "__main__":
    main()
