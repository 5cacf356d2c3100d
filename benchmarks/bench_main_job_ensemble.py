"""The main job's final ensemble against EMT on fresh Cu MD frames: is the potential it stopped with good?

The main job (``examples/active_learning_cu_emt.py``) ends when its ensemble is sure of the frames it
explores; this script checks what that ensemble is worth. It runs EMT Langevin MD of the example's
three 32-atom fcc Cu cells (perfect, with a vacancy, strained by 3 %) at 300, 600, 900 and 1200 K,
keeps 20 frames of each cell per temperature, and prints for every folder of ``member*.pt``
checkpoints the force RMSE (meV/Å) of the ensemble mean and of the members, and at 900 K the mean
over frames of the largest atomic force deviation over the mean largest atomic force error (1: the
spread sizes the error; below 1: the ensemble is over-confident).

    python -m benchmarks.bench_main_job_ensemble al_cu_emt other_run/al_cu_emt
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from ase import Atoms, units
from ase.build import bulk
from ase.calculators.emt import EMT
from ase.md.langevin import Langevin
from ase.md.velocitydistribution import thermalize_momenta
from tace_aiida.model.calculator import TACECalculator

TEMPERATURES_K = (300, 600, 900, 1200)


def example_cells() -> list[Atoms]:
    """The example's 2x2x2 conventional fcc Cu cells: perfect, with a vacancy, strained by 3 %."""
    perfect = bulk("Cu", "fcc", a=3.61, cubic=True).repeat(2)
    vacancy = perfect.copy()
    del vacancy[0]
    strained = perfect.copy()
    strained.set_cell(strained.cell * 1.03, scale_atoms=True)
    return [perfect, vacancy, strained]


def emt_frames(temperature_k: float, seed: int, frames_per_cell: int = 20) -> list[tuple[Atoms, np.ndarray]]:
    """(frame, EMT forces ``[n_atoms, 3]`` eV/Å) every 50 fs of Langevin MD (2 fs steps) of each cell."""
    rng = np.random.default_rng(seed)
    frames = []
    for cell in example_cells():
        atoms = cell.copy()
        atoms.calc = EMT()
        thermalize_momenta(atoms, temperature_K=temperature_k, rng=rng)
        dynamics = Langevin(atoms, 2 * units.fs, temperature_K=temperature_k, friction=0.02, rng=rng)
        for _ in range(frames_per_cell):
            dynamics.run(25)
            frames.append((Atoms(atoms.numbers, atoms.positions, cell=atoms.cell, pbc=True), atoms.get_forces()))
    return frames


def forces_of(calc: TACECalculator, atoms: Atoms) -> tuple[np.ndarray, dict]:
    """Forces ``[n_atoms, 3]`` (eV/Å) of ``calc`` on a copy of ``atoms``, and its results."""
    atoms = atoms.copy()
    atoms.calc = calc
    return atoms.get_forces(), calc.results


def rmse_mev(errors: list[np.ndarray]) -> float:
    return 1000.0 * float(np.sqrt(np.mean(np.concatenate(errors) ** 2)))


def report(folder: Path, frames: dict[int, list[tuple[Atoms, np.ndarray]]]) -> str:
    """One line: ensemble-mean and member force RMSE per temperature, and the spread/error ratio at 900 K."""
    members = sorted(folder.glob("member*.pt"))
    ensemble = TACECalculator([str(m) for m in members], device="cpu")
    singles = [TACECalculator(str(m), device="cpu") for m in members]
    parts = [f"{folder} ({len(members)} members)"]
    for temperature, data in frames.items():
        mean_errors = [forces_of(ensemble, atoms)[0] - reference for atoms, reference in data]
        member_errors = [forces_of(calc, atoms)[0] - reference for atoms, reference in data for calc in singles]
        parts.append(f"{temperature} K: mean {rmse_mev(mean_errors):.1f}, members {rmse_mev(member_errors):.1f}")
    deviations, errors = [], []
    for atoms, reference in frames[900]:
        forces, results = forces_of(ensemble, atoms)
        deviations.append(results["max_force_std"])
        errors.append(float(np.linalg.norm(forces - reference, axis=-1).max()))
    parts.append(f"900 K spread/error {np.mean(deviations) / np.mean(errors):.2f}")
    return " | ".join(parts)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folders", nargs="+", type=Path, help="folders with the member*.pt of a main-job run")
    args = parser.parse_args()
    frames = {temperature: emt_frames(temperature, seed=temperature) for temperature in TEMPERATURES_K}
    print("force RMSE against EMT (meV/Å), 60 frames per temperature")
    for folder in args.folders:
        print(report(folder, frames))


if __name__ == "__main__":
    main()
