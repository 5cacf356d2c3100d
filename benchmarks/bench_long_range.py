"""Long range on a periodic ionic case: the short-range model against the same model with ``long_range: true``.

Frames are 1x1x``--repeat`` conventional NaCl cells (8 atoms per cube, a = 5.70 Å), strained isotropically
by up to 2 % and rattled by 0.1 Å; in two of three frames one Na and one Cl swap sites, an antisite
pair whose excess charges (+2 e and -2 e) sit 2.9 Å to half the cell length apart. Labels come from the
rigid-ion reference of :mod:`benchmarks.rigid_ion_nacl` (Ewald Coulomb of formal charges plus
Buckingham terms), so part of the energy depends on the defects' separation beyond any cutoff.

Both models have identical settings and training; they differ only in ``long_range``. Printed: test
energy RMSE (meV/atom) and force RMSE (meV/Å) of each, their ratio, and seconds per epoch.

    python -m benchmarks.bench_long_range --seed 1     # about 15 min on one core
    python -m benchmarks.bench_long_range --quick      # a minute: checks the script works
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
from ase import Atoms
from ase.build import bulk
from ase.calculators.singlepoint import SinglePointCalculator
from ase.io import write
from tace_aiida.model.config import TrainingConfig
from tace_aiida.model.training import train

from benchmarks.common import print_and_save
from benchmarks.rigid_ion_nacl import LATTICE_CONSTANT, rigid_ion_calculator

MODEL = {"channels": 16, "radial_mlp": [32, 32], "max_edge_rank": 2, "max_hidden_rank": 1, "correlation": 2,
         "num_interactions": 2, "r_max": 5.0}


def nacl_frame(rng: np.random.Generator, repeat: int) -> Atoms:
    """One labelled frame: strained, rattled, and with probability 2/3 an antisite pair."""
    atoms = bulk("NaCl", "rocksalt", a=LATTICE_CONSTANT, cubic=True) * (1, 1, repeat)
    atoms.set_cell(atoms.cell[:] * (1 + rng.uniform(-0.02, 0.02)), scale_atoms=True)
    if rng.random() < 2 / 3:
        sodium = rng.choice(np.flatnonzero(atoms.numbers == 11))
        chlorine = rng.choice(np.flatnonzero(atoms.numbers == 17))
        atoms.numbers[[sodium, chlorine]] = [17, 11]
    atoms.positions += rng.normal(scale=0.1, size=atoms.positions.shape)
    atoms.calc = rigid_ion_calculator()
    energy, forces = atoms.get_potential_energy(), atoms.get_forces()
    atoms.calc = SinglePointCalculator(atoms, energy=energy, forces=forces)
    return atoms


def run(long_range: bool, folder: Path, args: argparse.Namespace) -> dict:
    """Train one model on ``folder``'s frames; its test errors and seconds per epoch."""
    settings = TrainingConfig.from_dict(
        dict(
            train_file="train.xyz", valid_file="valid.xyz", test_file="test.xyz", atomic_energies={11: 0.0, 17: 0.0},
            model={**MODEL, "long_range": long_range}, energy_weight=1.0, forces_weight=10.0,
            max_epochs=args.epochs, patience=args.epochs, batch_size=5, seed=args.seed, device="cpu",
            output_dir=f"long_range_{long_range}", progress_bar=False,
        ),
        base_dir=folder,
    )
    summary = train(settings)
    test = summary["test"]
    return {
        "long_range": long_range,
        "energy_rmse_meV_per_atom": 1000 * test["energy_per_atom_rmse"],
        "forces_rmse_meV_per_A": 1000 * test["forces_rmse"],
        "seconds_per_epoch": summary["wall_seconds"] / summary["epochs_run"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--train", type=int, default=120, help="training frames (and a sixth as many validation frames)")
    parser.add_argument("--test", type=int, default=100, help="test frames")
    parser.add_argument("--repeat", type=int, default=6, help="cubes along the long cell axis (8 atoms each)")
    parser.add_argument("--epochs", type=int, default=60)
    parser.add_argument("--seed", type=int, default=1, help="frames and model initialisation")
    parser.add_argument("--quick", action="store_true", help="tiny run that only checks the script works")
    parser.add_argument("--output", type=Path, default=Path("bench_long_range.json"))
    args = parser.parse_args()
    if args.quick:
        args.train, args.test, args.repeat, args.epochs = 10, 5, 2, 2
    rng = np.random.default_rng(args.seed)
    frames = [nacl_frame(rng, args.repeat) for _ in range(args.train + args.train // 6 + args.test)]
    valid_end = args.train + args.train // 6
    with tempfile.TemporaryDirectory(prefix="bench_long_range_") as scratch:
        folder = Path(scratch)
        write(folder / "train.xyz", frames[: args.train])
        write(folder / "valid.xyz", frames[args.train : valid_end])
        write(folder / "test.xyz", frames[valid_end:])
        rows = [run(long_range, folder, args) for long_range in (False, True)]
    short, long = rows
    lines = [
        f"{len(frames[0])}-atom NaCl cells, {args.train} training frames, {args.epochs} epochs, seed {args.seed}",
        "| model | energy RMSE (meV/atom) | force RMSE (meV/Å) | s/epoch |",
        "|---|---|---|---|",
    ]
    for row in rows:
        name = "long_range: true" if row["long_range"] else "short range (default)"
        lines.append(f"| {name} | {row['energy_rmse_meV_per_atom']:.2f} | {row['forces_rmse_meV_per_A']:.1f} | "
                     f"{row['seconds_per_epoch']:.2f} |")
    lines.append(f"long/short: energy {long['energy_rmse_meV_per_atom'] / short['energy_rmse_meV_per_atom']:.2f}, "
                 f"forces {long['forces_rmse_meV_per_A'] / short['forces_rmse_meV_per_A']:.2f}, "
                 f"time {long['seconds_per_epoch'] / short['seconds_per_epoch']:.2f}")
    print_and_save(lines, args.output, args, model=MODEL, rows=rows)


if __name__ == "__main__":
    main()
