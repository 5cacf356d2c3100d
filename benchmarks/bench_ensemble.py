"""MD steps per second of an ensemble: 1 member, 4 members one by one, 4 members batched, 4 members
driven by the first (``driven_by: first_member``: the first member integrates every step, the 4 are
evaluated one by one every ``--save-interval`` steps, as ``tace-md`` records a frame), the same with the first
member compiled by AOTInductor (``compile_driver: true``; compiling is not timed), and 1 member with its feature
uncertainty (``uncertainty="features"``, the single-model alternative to an ensemble).

Members are random-weight potentials of the default architecture (2 layers, 32 channels, edge
rank 3, hidden rank 1, correlation 3, radial MLP [64, 64, 64], cutoff 5 Å) with different seeds,
saved as checkpoints and run through :class:`TACECalculator` under Langevin dynamics (300 K,
0.5 fs) on two systems: a 27-atom 3BPA molecule (tests/data) and a 216-atom rattled fcc Cu cell
(6x6x6 primitive cells, periodic, stress computed). Each configuration runs ``--steps`` timed
steps after one warm-up step, configurations alternate over ``--rounds`` rounds and the best
round counts (the machine may be shared). Wall-clock times, ``--threads`` torch threads. The feature
uncertainty is fitted, as training stores it, on labelled frames: 3BPA's DFT frames (tests/data) for the
molecule, rattled copies of the cell labelled by EMT for the metal.

``--malloc keep`` (the default, as ``tace-md`` runs) makes glibc keep freed memory for reuse
(:func:`~tace_aiida.model.calculator.keep_freed_memory`); ``--malloc default`` leaves glibc's
allocator as it is, which page-faults the large per-edge tensors in again at every step.
``--output`` appends the run (settings and steps per second) to a JSON file.

    python benchmarks/bench_ensemble.py            # about 5 minutes on one CPU core
    python benchmarks/bench_ensemble.py --malloc default --output benchmarks/results/bench_ensemble.json
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from ase import Atoms, units
from ase.build import bulk
from ase.calculators.emt import EMT
from ase.io import read
from ase.md.langevin import Langevin
from ase.md.velocitydistribution import thermalize_momenta
from tace_aiida.model.calculator import TACECalculator, keep_freed_memory
from tace_aiida.model.checkpoint import load_model, save_checkpoint
from tace_aiida.model.data import LabelKeys, atoms_to_graph, edges_within_cutoff
from tace_aiida.model.feature_uncertainty import fit_feature_uncertainty
from tace_aiida.model.md import compiled_driver
from tace_aiida.model.potential import CartesianTensorPotential, ModelConfig

DATA = Path(__file__).resolve().parents[1] / "tests" / "data"
MEMBERS = 4


def systems() -> dict[str, Atoms]:
    molecule = read(DATA / "3bpa_300K_40.xyz", "0")
    copper = bulk("Cu", "fcc", a=3.61) * (6, 6, 6)
    copper.rattle(0.05, seed=0)
    return {"3BPA, 27 atoms": molecule, "Cu fcc, 216 atoms (periodic)": copper}


def member_checkpoints(atoms: Atoms, folder: Path, dtype: torch.dtype) -> list[Path]:
    """``MEMBERS`` checkpoints of the default architecture with seeds 0, 1, ... for ``atoms``' species."""
    species = sorted(set(int(z) for z in atoms.numbers))
    neighbours = len(edges_within_cutoff(atoms, 5.0)[0]) / len(atoms)
    paths = []
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        for seed in range(MEMBERS):
            torch.manual_seed(seed)
            config = ModelConfig(atomic_numbers=species, atomic_energies=[0.0] * len(species), avg_num_neighbors=neighbours)
            paths.append(save_checkpoint(folder / f"member_{seed}.pt", CartesianTensorPotential(config).eval()))
    finally:
        torch.set_default_dtype(previous)
    return paths


def labelled_frames(atoms: Atoms) -> list[Atoms]:
    """Eight labelled frames like ``atoms`` (eV/Å forces): 3BPA's DFT frames, or EMT on rattled copies of a cell."""
    if not atoms.pbc.any():
        return read(DATA / "3bpa_300K_40.xyz", ":8")
    frames = []
    for seed in range(8):
        frame = atoms.copy()
        frame.rattle(0.05, seed=100 + seed)
        frame.calc = EMT()
        frame.get_forces()
        frames.append(frame)
    return frames


def with_feature_uncertainty(checkpoint: Path, frames: list[Atoms]) -> Path:
    """A copy of ``checkpoint`` with its feature uncertainty fitted on ``frames`` (6 train, 2 validation)."""
    model, metadata = load_model(checkpoint)
    dtype = next(model.parameters()).dtype
    graphs = [atoms_to_graph(frame, model.config.atomic_numbers, model.config.r_max, LabelKeys(), dtype) for frame in frames]
    fitted = fit_feature_uncertainty(model, graphs[:6], graphs[6:])
    path = checkpoint.with_name(f"{checkpoint.stem}_features.pt")
    return save_checkpoint(path, model, metadata, feature_uncertainty=fitted.state())


def steps_per_second(atoms: Atoms, calculator: TACECalculator, steps: int,
                     recorder: TACECalculator | None = None, save_interval: int = 1) -> float:
    """Wall-clock Langevin MD steps per second, after one untimed warm-up step; ``recorder`` (the
    ensemble, when ``calculator`` is its first member) is evaluated every ``save_interval`` steps."""
    atoms = atoms.copy()
    atoms.calc = calculator
    thermalize_momenta(atoms, temperature_K=300, rng=np.random.default_rng(0))
    dynamics = Langevin(atoms, 0.5 * units.fs, temperature_K=300, friction=0.01, fixcm=False,
                        rng=np.random.default_rng(1))
    if recorder is not None:
        dynamics.attach(lambda: recorder.get_potential_energy(atoms), interval=save_interval)
    dynamics.run(1)
    start = time.perf_counter()
    dynamics.run(steps)
    return steps / (time.perf_counter() - start)


def max_difference(atoms: Atoms, first: TACECalculator, second: TACECalculator) -> float:
    """Largest difference of energy, forces and their spreads between two calculators (eV, eV/Å)."""
    results = []
    for calculator in (first, second):
        calculator.calculate(atoms.copy(), ["energy"])
        results.append(calculator.results)
    names = ("energy", "forces", "energy_std", "forces_std") + (("stress", "stress_std") if atoms.pbc.all() else ())
    return max(float(np.abs(np.asarray(results[0][n]) - np.asarray(results[1][n])).max()) for n in names)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    parser.add_argument("--dtype", choices=["float32", "float64"], default="float64")
    parser.add_argument("--steps", type=int, nargs=2, default=[20, 10], metavar=("MOLECULE", "CELL"),
                        help="timed MD steps per configuration for the molecule and the cell")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--save-interval", type=int, default=10,
                        help="steps between the ensemble's evaluations when the first member drives (the loop's default)")
    parser.add_argument("--malloc", choices=["keep", "default"], default="keep",
                        help="keep: glibc keeps freed memory for reuse (as tace-md); default: glibc as it is")
    parser.add_argument("--output", type=Path, help="JSON file the run is appended to")
    args = parser.parse_args()
    if args.malloc == "keep" and not keep_freed_memory():
        parser.error("--malloc keep needs glibc")
    torch.set_num_threads(args.threads)
    dtype = getattr(torch, args.dtype)
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        for (name, atoms), steps in zip(systems().items(), args.steps, strict=True):
            workdir = Path(folder) / str(len(rows))
            workdir.mkdir()
            paths = member_checkpoints(atoms, workdir, dtype)
            calculators = {
                "1 member": TACECalculator(paths[:1], device="cpu"),
                "4 one by one": TACECalculator(paths, device="cpu", batched=False),
                "4 batched": TACECalculator(paths, device="cpu", batched=True),
                "4 driven by 1st": TACECalculator(paths[:1], device="cpu"),
                "4 driven by compiled 1st": compiled_driver(paths[0], torch.device("cpu"), workdir / "driver.pt2"),
                "1 features": TACECalculator(with_feature_uncertainty(paths[0], labelled_frames(atoms)), device="cpu",
                                             uncertainty="features"),
            }
            difference = max_difference(atoms, calculators["4 one by one"], calculators["4 batched"])
            recorders = {key: TACECalculator(paths, device="cpu", batched=False)
                         for key in ("4 driven by 1st", "4 driven by compiled 1st")}
            best = {key: 0.0 for key in calculators}
            for _ in range(args.rounds):
                for key, calculator in calculators.items():
                    rate = steps_per_second(atoms, calculator, steps, recorders.get(key), args.save_interval)
                    best[key] = max(best[key], rate)
            rows.append((name, best, difference))
            print(f"{name}: {best} (batched - one by one: {difference:.1e})", flush=True)
    print(f"\nMD steps/s, Langevin 0.5 fs, {args.dtype}, {args.threads} thread(s), malloc {args.malloc}, "
          f"best of {args.rounds} rounds")
    print(f"{'system':30} {'1 member':>9} {'4 one by one':>13} {'4 batched':>10} {'4 driven by 1st':>16} "
          f"{'4 by compiled 1st':>18} {'1 features':>11} {'cost 4 1-by-1':>14} {'cost 4 batched':>15} "
          f"{'cost driven':>12} {'cost compiled':>14} {'cost features':>14} {'max |diff|':>11}")
    for name, best, difference in rows:
        one = best["1 member"]
        print(
            f"{name:30} {one:9.2f} {best['4 one by one']:13.2f} {best['4 batched']:10.2f} {best['4 driven by 1st']:16.2f} "
            f"{best['4 driven by compiled 1st']:18.2f} {best['1 features']:11.2f} {one / best['4 one by one']:13.2f}x "
            f"{one / best['4 batched']:14.2f}x {one / best['4 driven by 1st']:11.2f}x "
            f"{one / best['4 driven by compiled 1st']:13.2f}x {one / best['1 features']:13.2f}x {difference:11.1e}"
        )
    print(f"cost = time per MD step relative to 1 member (goal for 4 members: at most 2x); 4 driven by 1st = the "
          f"first member integrates, the 4 are evaluated every {args.save_interval} steps (by compiled 1st: the first "
          "member's AOTInductor program integrates); 1 features = one member with its feature uncertainty")
    if args.output:
        runs = json.loads(args.output.read_text()) if args.output.exists() else []
        runs.append({
            "settings": {**{k: v for k, v in vars(args).items() if k != "output"}, "torch": torch.__version__,
                         "machine": platform.machine(), "processor": platform.processor()},
            "steps_per_second": {name: best for name, best, _ in rows},
            "max_difference_batched_vs_one_by_one": {name: difference for name, _, difference in rows},
        })
        args.output.write_text(json.dumps(runs, indent=1) + "\n")


if __name__ == "__main__":
    main()
