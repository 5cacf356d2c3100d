"""Exploration MD driven by the members' mean or by the first member: does the driver change what is found?

For every folder of ``member*.pt`` checkpoints (an ensemble the loop trained, e.g. the main job's
``al_cu_emt``), runs ``tace-md``'s dynamics (:func:`tace_aiida.model.md.run_md`: Langevin, the ``fast``
protocol's 200 steps of 2 fs, a frame every 10 steps) from the example's three Cu cells (perfect, with a
vacancy, strained by 3 %) at each ``--temperatures`` entry with seeds 1..``--seeds``, once with
``driven_by: mean`` and once with ``driven_by: first_member``, the same starts and seeds for both. Prints,
per driver, the saved frames' largest atomic force deviation (eV/Å: median, 90th percentile, largest), the
fraction of frames above ``--trust-low`` (the loop's candidates), and the MD's wall time.

    python -m benchmarks.bench_md_driver al_cu_emt --temperatures 600 900
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch
from tace_aiida.model import md
from tace_aiida.model.calculator import keep_freed_memory

from benchmarks.bench_main_job_ensemble import example_cells


def deviations(members: list[Path], temperature: float, seeds: int, driven_by: str,
               args: argparse.Namespace) -> tuple[np.ndarray, float]:
    """Max force deviations (eV/Å) of every saved frame but the starts, and the MD's wall time (s)."""
    values, seconds = [], 0.0
    for atoms in example_cells():
        for seed in range(1, seeds + 1):
            settings = md.MDSettings(checkpoints=[str(m) for m in members], temperature=temperature, steps=args.steps,
                                     timestep=2.0, save_interval=args.save_interval, seed=seed, device="cpu",
                                     driven_by=driven_by)
            ensemble, driver = md.calculators(members, settings, members[0].parent)
            start = time.perf_counter()
            arrays, _ = md.run_md(atoms, settings, ensemble, driver)
            seconds += time.perf_counter() - start
            values.extend(arrays["max_force_std"][1:])
    return np.asarray(values), seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folders", type=Path, nargs="+", help="folders of member*.pt checkpoints")
    parser.add_argument("--temperatures", type=float, nargs="+", default=[900.0], help="K")
    parser.add_argument("--seeds", type=int, default=5, help="MD runs per cell and temperature")
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--save-interval", type=int, default=10)
    parser.add_argument("--trust-low", type=float, default=0.1, help="eV/Å, the fast protocol's")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    keep_freed_memory()
    print("| ensemble | T (K) | driven by | frames | median (eV/Å) | 90th percentile | largest | above trust_low | MD time (s) |")
    print("|---|---|---|---|---|---|---|---|---|")
    for folder in args.folders:
        members = sorted(folder.glob("member*.pt"))
        for temperature in args.temperatures:
            for driven_by in md.DRIVERS:
                values, seconds = deviations(members, temperature, args.seeds, driven_by, args)
                print(f"| {folder} ({len(members)} members) | {temperature:g} | {driven_by} | {len(values)} | "
                      f"{np.median(values):.3f} | {np.quantile(values, 0.9):.3f} | {values.max():.3f} | "
                      f"{(values > args.trust_low).mean():.3f} | {seconds:.1f} |", flush=True)


if __name__ == "__main__":
    main()
