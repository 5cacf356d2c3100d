"""``tace-md``: exploration MD with an ensemble of potentials, recording the ensemble's uncertainty.

Runs in a job's working directory with no database. Reads ``md.json`` (settings, below),
``structure.extxyz`` and the checkpoints named in the settings; writes ``trajectory.npz`` and
``md_result.json`` (``stop_reason``: ``completed``, ``uncertainty`` when the max force deviation
passed ``max_force_std``, or ``unphysical`` when atoms came closer than ``min_distance``, overlapped
as :func:`~tace_aiida.model.validation.check_structure` refuses for training, or the energy
stopped being finite). Before any step the settings (types and ranges), the checkpoints (readable,
one species and cutoff) and the start structure (no overlap, a cell with volume, only the
ensemble's elements) are checked; a refused run writes nothing.

Settings (units: K, GPa, fs, eV/Å, Å, 1/fs):

    {"checkpoints": ["member0.pt", ...], "ensemble": "nvt", "thermostat": "langevin",
     "temperature": 300, "pressure": 0.0, "timestep": 1.0, "steps": 1000, "save_interval": 10,
     "friction": 0.01, "thermostat_time": 100.0, "barostat_time": 1000.0,
     "max_force_std": null, "min_distance": 0.5, "seed": 1, "device": "auto",
     "bias_strength": 0.0, "bias_width": 0.05, "uncertainty": "ensemble", "driven_by": "mean",
     "compile_driver": false}

``ensemble``: ``nve`` (velocity Verlet), ``nvt`` (``thermostat`` ``langevin`` or ``bussi``) or
``npt`` (isotropic MTK barostat with Nose-Hoover chains). The trajectory arrays, frame-major:
``positions`` [F, N, 3] Å, ``cells`` [F, 3, 3] Å, ``energies`` [F] eV, ``forces`` [F, N, 3] eV/Å,
``energy_std`` [F] eV, ``forces_std`` [F, N] eV/Å, ``max_force_std`` [F] eV/Å,
``descriptors`` [F, D], ``temperatures`` [F] K, ``steps`` [F], plus ``numbers`` [N] and ``pbc`` [3], and
the conditions the model ran with (from the info of ``structure.extxyz``, neutral when absent):
``charge`` [F] e, ``spin`` [F] (multiplicity), ``fidelity`` [F], ``electric_field`` [F, 3] V/Å.

``bias_strength`` (eV) above 0 drives the dynamics with the uncertainty bias of
:class:`~tace_aiida.model.bias.UncertaintyBias` (``bias_width`` in eV per sqrt(atom)); the trajectory
still records the members' mean energies and forces, not the biased ones.

``uncertainty``: ``ensemble`` (the members' force spread) or ``features`` (each member's expected force
error from its own features, :mod:`~tace_aiida.model.feature_uncertainty`; one checkpoint is enough)
gives ``forces_std`` and so the ``max_force_std`` stop.

``driven_by``: ``mean`` integrates the members' mean forces, so every step evaluates every member;
``first_member`` integrates the first checkpoint's forces and evaluates the whole ensemble only at the
saved frames (DP-GEN's convention: its LAMMPS runs follow the first model and write the model deviation
every ``out_freq`` steps). M members then cost ``1 + M / save_interval`` times one member per step instead
of M times; the saved frames, the uncertainty and the stops are the ensemble's as before, on a path
that follows one member. Not with the uncertainty bias, which needs every member at every step.

``compile_driver`` (with ``driven_by: first_member``) first compiles the first member by AOTInductor into
``driver.pt2`` (``tace-export --compile``'s program, for the run's device; about a minute, and a C++ compiler
such as ``g++``), which then integrates the dynamics; the saved frames are evaluated by the checkpoints as
before. Worth it for long runs: the compiled program costs 0.4-0.8x the checkpoint per energy-and-forces
call (``benchmarks/bench_compiled_ensemble.py``). If compiling fails the checkpoint drives and stderr says
why; ``md_result.json`` names the ``driver`` that ran.
"""

from __future__ import annotations

import json
import math
import sys
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import numpy as np
import torch
from ase import Atoms, units
from ase.calculators.calculator import Calculator
from ase.constraints import FixCom
from ase.md.bussi import Bussi
from ase.md.langevin import Langevin
from ase.md.md import MolecularDynamics
from ase.md.nose_hoover_chain import IsotropicMTKNPT
from ase.md.velocitydistribution import Stationary, thermalize_momenta
from ase.md.verlet import VelocityVerlet

from .bias import UncertaintyBias
from .calculator import UNCERTAINTIES, TACECalculator, keep_freed_memory
from .checkpoint import load_model, read_checkpoint
from .data import is_device, species_indices
from .export import DeployedCalculator
from .exported_program import export_program
from .structure_conditions import condition_info_of
from .validation import (
    Rule,
    at_least,
    check_dataclass,
    check_ensemble,
    check_structure,
    greater_than,
    overlapping_pair,
    read_structures,
)

#: What the dynamics integrate: the members' mean forces, or the first member's (see the module docstring).
DRIVERS = ("mean", "first_member")

SETTINGS = "md.json"
STRUCTURE = "structure.extxyz"
TRAJECTORY = "trajectory.npz"
RESULT = "md_result.json"
DRIVER_PROGRAM = "driver.pt2"

#: Ranges of the settings (K, GPa, fs, eV/Å, Å, 1/fs).
MD_RULES: dict[str, Rule] = {
    "temperature": at_least(0.0), "pressure": (math.isfinite, "finite"), "timestep": greater_than(0.0),
    "steps": at_least(1), "save_interval": at_least(1), "friction": at_least(0.0),
    "thermostat_time": greater_than(0.0), "barostat_time": greater_than(0.0), "max_force_std": greater_than(0.0),
    "min_distance": at_least(0.0), "seed": at_least(0), "bias_strength": at_least(0.0), "bias_width": greater_than(0.0),
    "device": (is_device, "'auto' or a torch device such as 'cpu', 'cuda' or 'cuda:1'"),
}


@dataclass
class MDSettings:
    """Exploration settings; see the module docstring for units and choices."""

    checkpoints: list[str] = field(default_factory=list)
    ensemble: str = "nvt"
    thermostat: str = "langevin"
    temperature: float = 300.0
    pressure: float = 0.0
    timestep: float = 1.0
    steps: int = 1000
    save_interval: int = 10
    friction: float = 0.01
    thermostat_time: float = 100.0
    barostat_time: float = 1000.0
    max_force_std: float | None = None
    min_distance: float = 0.5
    seed: int = 1
    device: str = "auto"
    bias_strength: float = 0.0
    bias_width: float = 0.05
    uncertainty: str = "ensemble"
    driven_by: str = "mean"
    compile_driver: bool = False

    @property
    def bias(self) -> UncertaintyBias | None:
        """The uncertainty bias, None when ``bias_strength`` is 0."""
        return UncertaintyBias(self.bias_strength, self.bias_width) if self.bias_strength > 0 else None

    def __post_init__(self) -> None:
        check_dataclass(self, MD_RULES, "MD setting")
        if self.ensemble not in ("nve", "nvt", "npt"):
            raise ValueError(f"ensemble must be nve, nvt or npt, not {self.ensemble!r}")
        if self.ensemble == "nvt" and self.thermostat not in ("langevin", "bussi"):
            raise ValueError(f"NVT thermostat must be langevin or bussi, not {self.thermostat!r}")
        if self.uncertainty not in UNCERTAINTIES:
            raise ValueError(f"uncertainty must be one of {', '.join(UNCERTAINTIES)}, not {self.uncertainty!r}")
        if self.driven_by not in DRIVERS:
            raise ValueError(f"driven_by must be one of {', '.join(DRIVERS)}, not {self.driven_by!r}")
        if self.driven_by == "first_member" and self.bias_strength > 0:
            raise ValueError(f"driven_by: first_member cannot run the uncertainty bias (bias_strength "
                             f"{self.bias_strength} eV), which needs every member at every step; use driven_by: mean")
        if self.compile_driver and self.driven_by != "first_member":
            raise ValueError(f"compile_driver: true needs driven_by: first_member, not {self.driven_by!r}: the compiled "
                             "program is the first member alone")

    @classmethod
    def from_dict(cls, data: dict) -> MDSettings:
        unknown = set(data) - {f.name for f in fields(cls)}
        if unknown:
            raise ValueError(f"unknown MD settings {sorted(unknown)}")
        return cls(**data)

    def to_dict(self) -> dict:
        return asdict(self)


def make_dynamics(atoms: Atoms, settings: MDSettings) -> MolecularDynamics:
    """The ASE integrator for ``settings`` (ASE units converted from fs, K, GPa).

    Langevin holds the centre of mass with a :class:`~ase.constraints.FixCom` constraint on ``atoms``
    (unless they carry constraints of their own), as ASE asks since its ``fixcm`` option was found to
    bias the sampled distribution, most for small molecules."""
    timestep = settings.timestep * units.fs
    rng = np.random.default_rng(settings.seed)
    if settings.ensemble == "nve":
        return VelocityVerlet(atoms, timestep=timestep)
    if settings.ensemble == "npt":
        if not atoms.pbc.all():
            raise ValueError("NPT needs a cell periodic in all three directions")
        return IsotropicMTKNPT(
            atoms, timestep=timestep, temperature_K=settings.temperature,
            pressure_au=settings.pressure * units.GPa,
            tdamp=settings.thermostat_time * units.fs, pdamp=settings.barostat_time * units.fs,
        )
    if settings.thermostat == "bussi":
        return Bussi(atoms, timestep, temperature_K=settings.temperature, taut=settings.thermostat_time * units.fs, rng=rng)
    if not atoms.constraints:
        atoms.set_constraint(FixCom())
    return Langevin(atoms, timestep, temperature_K=settings.temperature, friction=settings.friction / units.fs,
                    fixcm=False, rng=rng)


def closest_distance(atoms: Atoms) -> float:
    """Smallest interatomic distance (Å), periodic images included; inf for one atom."""
    if len(atoms) < 2:
        return float("inf")
    distances = atoms.get_all_distances(mic=bool(atoms.pbc.any()))
    return float(distances[np.triu_indices(len(atoms), k=1)].min())


class FrameRecorder:
    """Collects the saved frames, as ``ensemble`` (by default the atoms' own calculator) predicts them,
    and decides whether the run must stop."""

    def __init__(self, atoms: Atoms, settings: MDSettings, ensemble: Calculator | None = None) -> None:
        self.atoms = atoms
        self.settings = settings
        self.ensemble = ensemble if ensemble is not None else atoms.calc
        self.frames: dict[str, list] = {key: [] for key in (
            "positions", "cells", "energies", "forces", "energy_std", "forces_std", "max_force_std",
            "descriptors", "temperatures", "steps")}
        self.stop_reason: str | None = None

    def record(self, step: int) -> None:
        self.ensemble.get_potential_energy(self.atoms)  # computed now unless the ensemble drives the dynamics
        results = self.ensemble.results
        energy = results.get("unbiased_energy", results["energy"])
        too_close = closest_distance(self.atoms) < self.settings.min_distance or overlapping_pair(self.atoms) is not None
        if not np.isfinite(energy) or too_close:
            self.stop_reason = "unphysical"
            return
        values = {
            "positions": self.atoms.positions.copy(), "cells": self.atoms.cell[:].copy(),
            "energies": energy, "forces": results.get("unbiased_forces", results["forces"]).copy(),
            "energy_std": results["energy_std"],
            "forces_std": results["forces_std"].copy(), "max_force_std": results["max_force_std"],
            "descriptors": results["descriptors"].copy(), "temperatures": self.atoms.get_temperature(), "steps": step,
        }
        for key, value in values.items():
            self.frames[key].append(value)
        threshold = self.settings.max_force_std
        if threshold is not None and results["max_force_std"] > threshold:
            self.stop_reason = "uncertainty"

    def arrays(self) -> dict[str, np.ndarray]:
        arrays = {key: np.asarray(values) for key, values in self.frames.items()}
        arrays["numbers"] = self.atoms.numbers.copy()
        arrays["pbc"] = self.atoms.pbc.copy()
        frames = len(self.frames["steps"])
        for name, value in condition_info_of(self.atoms).items():
            arrays[name] = np.repeat(np.asarray(value)[None], frames, axis=0)
        return arrays


def run_md(atoms: Atoms, settings: MDSettings, calculator: TACECalculator,
           driver: TACECalculator | None = None) -> tuple[dict[str, np.ndarray], dict]:
    """Run the exploration with the ensemble ``calculator``; returns (trajectory arrays, result summary).

    ``driver`` (one member, for ``driven_by: first_member``) integrates the dynamics instead of the
    ensemble, which then only evaluates the saved frames."""
    atoms = atoms.copy()
    atoms.calc = driver if driver is not None else calculator
    thermalize_momenta(atoms, temperature_K=settings.temperature, rng=np.random.default_rng(settings.seed))
    Stationary(atoms)
    dynamics = make_dynamics(atoms, settings)
    recorder = FrameRecorder(atoms, settings, calculator)
    atoms.get_potential_energy()
    recorder.record(0)
    step = 0
    while recorder.stop_reason is None and step < settings.steps:
        chunk = min(settings.save_interval, settings.steps - step)
        dynamics.run(chunk)
        step += chunk
        recorder.record(step)
    summary = {"stop_reason": recorder.stop_reason or "completed", "steps_done": step,
               "frames": len(recorder.frames["steps"]), "settings": settings.to_dict()}
    return recorder.arrays(), summary


def calculators(checkpoints: list[Path], settings: MDSettings,
                folder: Path) -> tuple[TACECalculator, Calculator | None]:
    """The ensemble that records the frames and, for ``driven_by: first_member``, the first member that drives the
    dynamics (None: the ensemble drives them), compiled into ``folder`` with ``compile_driver``."""
    ensemble = TACECalculator(checkpoints, device=settings.device, bias=settings.bias, uncertainty=settings.uncertainty)
    if settings.compile_driver:
        try:
            return ensemble, compiled_driver(checkpoints[0], ensemble.device, folder / DRIVER_PROGRAM)
        except Exception as error:  # noqa: BLE001 - no C++ compiler, an operator AOTInductor cannot lower, ...
            print(f"tace-md: compiling the first member failed, its checkpoint drives instead: "
                  f"{type(error).__name__}: {error}", file=sys.stderr)
    if settings.driven_by == "first_member" and len(checkpoints) > 1:
        return ensemble, TACECalculator(checkpoints[:1], device=settings.device)
    return ensemble, None


def driver_name(driver: Calculator | None, settings: MDSettings) -> str:
    """Which driver :func:`calculators` gave, in words, for ``md_result.json``."""
    if isinstance(driver, DeployedCalculator):
        return "compiled first member"
    return "first member" if settings.driven_by == "first_member" else "ensemble mean"


def compiled_driver(checkpoint: Path, device: torch.device, path: Path,
                    dtype: torch.dtype | None = None) -> DeployedCalculator:
    """``checkpoint``'s model compiled by AOTInductor for ``device`` into ``path`` (``tace-export --compile``'s
    program, in ``dtype``, by default the checkpoint's), as an ASE calculator."""
    model, _ = load_model(checkpoint, device, dtype)
    export_program(model, path, compiled=True)
    return DeployedCalculator(path, device=str(device), compiled=True)


def read_settings(path: Path) -> MDSettings:
    """The settings in the JSON file ``path``; an error names the file."""
    try:
        data = json.loads(path.read_text())
        if not isinstance(data, dict):
            raise ValueError(f"it holds a {type(data).__name__}, not a mapping of settings")
        return MDSettings.from_dict(data)
    except ValueError as error:
        raise ValueError(f"{path}: {error}") from None


def check_start(atoms: Atoms, checkpoints: list[Path]) -> None:
    """The checkpoints are readable and share species and cutoff, and ``atoms`` is a sound structure
    of the ensemble's elements; errors name the file."""
    if not checkpoints:
        raise ValueError(f"{SETTINGS} names no checkpoints")
    members = {str(path): read_checkpoint(path)["model_config"] for path in checkpoints}
    check_ensemble(members)
    try:
        check_structure(atoms)
        species_indices(atoms, members[str(checkpoints[0])]["atomic_numbers"])
    except ValueError as error:
        raise ValueError(f"{STRUCTURE} ({atoms.get_chemical_formula()}): {error}") from None


def main(folder: Path | None = None) -> int:
    folder = folder or Path.cwd()
    try:
        settings = read_settings(folder / SETTINGS)
        atoms = read_structures(folder / STRUCTURE)[-1]
        checkpoints = [folder / path for path in settings.checkpoints]
        check_start(atoms, checkpoints)
        keep_freed_memory()
        ensemble, driver = calculators(checkpoints, settings, folder)
        arrays, summary = run_md(atoms, settings, ensemble, driver)
    except (ValueError, OSError) as error:
        print(f"tace-md: {error}", file=sys.stderr)
        return 2
    summary["driver"] = driver_name(driver, settings)
    np.savez_compressed(folder / TRAJECTORY, **arrays)
    (folder / RESULT).write_text(json.dumps(summary, indent=1))
    print(f"tace-md: {summary['stop_reason']} after {summary['steps_done']} steps, {summary['frames']} frames")
    return 0


if __name__ == "__main__":
    sys.exit(main())
