"""Speed on a dense metal cell: tace-aiida against mace-torch on 256-atom fcc Cu, matched settings.

Materials users run dense periodic cells, where the per-edge work dominates: fcc Cu (a = 3.61 Å) has
42 neighbours per atom within the 5 Å cutoff, against about 14 in 3BPA. Both models are trained for
``--epochs`` on ``--frames`` rattled 32-atom Cu cells labelled by EMT (matched settings as in
:mod:`benchmarks.bench_3bpa`: 2 layers, edge rank 3, hidden rank 1, 32 channels, correlation 3, float32;
training only gives them the Cu species and sensible scales: speed does not depend on the weights), then
timed on a rattled 4x4x4 conventional cell (256 atoms): energy and forces per call, and NVE MD steps per
second. Configurations alternate over ``--rounds`` rounds and the best round counts (the machine may be
shared); ``--threads`` torch threads.

    python -m benchmarks.bench_dense_metal            # about 5 minutes on 2 cores
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import numpy as np
import torch
from ase import Atoms
from ase.build import bulk
from ase.calculators.emt import EMT
from ase.calculators.singlepoint import SinglePointCalculator
from tace_aiida.model.data import edges_within_cutoff

from benchmarks.common import MatchedSettings, inference_ms_per_structure, md_steps_per_second
from benchmarks.mace_peer import train_mace
from benchmarks.tace_peer import train_tace

LATTICE = 3.61  # Å, fcc Cu


def labelled_copper(count: int, repeat: int, seed: int) -> list[Atoms]:
    """``count`` rattled (0.05 Å) cubic Cu cells repeated ``repeat`` times per side, labelled by EMT."""
    frames = []
    for index in range(count):
        atoms = bulk("Cu", "fcc", a=LATTICE, cubic=True).repeat(repeat)
        atoms.rattle(0.05, seed=seed + index)
        atoms.calc = EMT()
        energy, forces = atoms.get_potential_energy(), atoms.get_forces()
        atoms.calc = SinglePointCalculator(atoms, energy=energy, forces=forces)
        frames.append(atoms)
    return frames


def isolated_energy() -> dict[int, float]:
    """EMT's energy (eV) of one Cu atom in vacuum, the E0 of both models."""
    atom = Atoms("Cu", cell=[20.0] * 3, pbc=False)
    atom.calc = EMT()
    return {29: float(atom.get_potential_energy())}


def neighbours_per_atom(atoms: Atoms, r_max: float) -> float:
    """Mean number of neighbours within ``r_max`` (Å)."""
    return len(edges_within_cutoff(atoms, r_max)[0]) / len(atoms)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", type=int, default=20, help="training cells of 32 atoms")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--md-steps", type=int, default=20)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--output", type=Path, default=Path("bench_dense_metal.json"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    settings = MatchedSettings(epochs=args.epochs)
    frames = labelled_copper(args.frames, repeat=2, seed=0)
    cell = bulk("Cu", "fcc", a=LATTICE, cubic=True).repeat(4)
    cell.rattle(0.05, seed=123)
    e0s = isolated_energy()
    with tempfile.TemporaryDirectory() as scratch:
        models = {
            "tace-aiida": train_tace(frames[2:], frames[:2], settings, Path(scratch) / "tace", e0s),
            "mace-torch": train_mace(frames[2:], frames[:2], settings, Path(scratch) / "mace", e0s),
        }
        rounds: dict[str, list[dict[str, float]]] = {name: [] for name in models}
        for _ in range(args.rounds):
            for name, model in models.items():
                rounds[name].append({
                    "inference_ms": inference_ms_per_structure(model.calculator, [cell], repeats=3, warmup=1),
                    "md_steps_per_s": md_steps_per_second(model.calculator, cell, steps=args.md_steps),
                })
    best = {name: {"inference_ms": min(r["inference_ms"] for r in runs),
                   "md_steps_per_s": max(r["md_steps_per_s"] for r in runs)} for name, runs in rounds.items()}
    ratio = {key: best["tace-aiida"][key] / best["mace-torch"][key] for key in ("inference_ms", "md_steps_per_s")}
    result = {"atoms": len(cell), "neighbours_per_atom": neighbours_per_atom(cell, settings.r_max),
              "threads": args.threads, "settings": {"epochs": args.epochs, "frames": args.frames, "dtype": settings.dtype},
              "rounds": rounds, "best": best, "tace_over_mace": ratio}
    args.output.write_text(json.dumps(result, indent=1))
    print(f"| {len(cell)}-atom fcc Cu, {result['neighbours_per_atom']:.0f} neighbours/atom, {args.threads} thread(s) "
          "| tace-aiida | mace-torch | tace-aiida / mace-torch |\n|---|---|---|---|")
    print(f"| energy and forces (ms) | {best['tace-aiida']['inference_ms']:.0f} | {best['mace-torch']['inference_ms']:.0f} "
          f"| {ratio['inference_ms']:.2f}× |")
    print(f"| MD (steps/s) | {best['tace-aiida']['md_steps_per_s']:.2f} | {best['mace-torch']['md_steps_per_s']:.2f} "
          f"| {ratio['md_steps_per_s']:.2f}× |")
    spread = {name: np.ptp([r["inference_ms"] for r in runs]) for name, runs in rounds.items()}
    print(f"spread of the inference time over {args.rounds} rounds (ms): {spread}")


if __name__ == "__main__":
    main()
