"""MD steps per second of the exported files, TorchScript (``.ts``) and torch.export's format (``.pt2``, portable and
compiled by AOTInductor), against the checkpoint in :class:`TACECalculator`, same random-weight default-architecture
model (``bench_ensemble.py``'s first member) on its two systems (3BPA, 27 atoms; a 216-atom rattled fcc Cu cell, with
its stress at every step).

Each calculator runs ``--steps`` timed NVE steps after one warm-up step; they alternate over ``--rounds`` rounds and the
best round counts. Also prints the largest force difference of each file from the checkpoint on the first frame.

    python -m benchmarks.bench_export            # about 3 minutes on one core
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import numpy as np
import torch
from tace_aiida.model.calculator import TACECalculator, keep_freed_memory
from tace_aiida.model.checkpoint import load_model
from tace_aiida.model.export import DeployedCalculator, export_model
from tace_aiida.model.exported_program import export_program

from .bench_ensemble import member_checkpoints, systems
from .common import md_steps_per_second


def calculators(checkpoint: Path, folder: Path) -> dict:
    """The checkpoint's calculator and those of its exported files: TorchScript, torch.export's portable program, and
    the same file's program compiled by AOTInductor."""
    model, _ = load_model(checkpoint)
    program = export_program(model, folder / "model.pt2", compiled=True)
    return {"checkpoint": TACECalculator([checkpoint], device="cpu"),
            ".ts": DeployedCalculator(export_model(model, folder / "model.ts")),
            ".pt2": DeployedCalculator(program, compiled=False),
            ".pt2 compiled": DeployedCalculator(program, compiled=True)}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--dtype", choices=["float32", "float64"], default="float32")
    parser.add_argument("--output", type=Path, default=None, help="write the rows as JSON")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    keep_freed_memory()
    rows = []
    for name, atoms in systems().items():
        with tempfile.TemporaryDirectory() as folder:
            checkpoint = member_checkpoints(atoms, Path(folder), getattr(torch, args.dtype))[0]
            calcs = calculators(checkpoint, Path(folder))
            reference = calcs["checkpoint"].get_forces(atoms.copy())
            differences = {kind: float(np.abs(calc.get_forces(atoms.copy()) - reference).max())
                           for kind, calc in calcs.items()}
            best = dict.fromkeys(calcs, 0.0)
            for _ in range(args.rounds):
                for kind, calc in calcs.items():
                    best[kind] = max(best[kind], md_steps_per_second(calc, atoms, args.steps))
        for kind in calcs:
            rows.append({"system": name, "calculator": kind, "steps_per_second": best[kind],
                         "ratio_to_checkpoint": best[kind] / best["checkpoint"],
                         "max_force_difference": differences[kind], "dtype": args.dtype})
            print(f"{name:32s} {kind:13s} {best[kind]:7.2f} steps/s  ({best[kind] / best['checkpoint']:.2f}x the "
                  f"checkpoint; forces differ by {differences[kind]:.1e} eV/Å)")
    if args.output:
        args.output.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
