"""Model-agnostic harness for the side-by-side 3BPA benchmark (and any dataset in its layout).

Units throughout: energies in eV, lengths in Å, forces in eV/Å; reported errors
in meV and meV/Å, times in s or ms, memory in MiB.

A *runner* is any callable with the signature of :data:`Runner`; it trains one
model on the given frames and returns a :class:`TrainedModel`. Reference labels
live on each frame's ``SinglePointCalculator`` (``atoms.get_potential_energy()``,
``atoms.get_forces()``).
"""

from __future__ import annotations

import json
import math
import multiprocessing
import os
import pickle
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from ase import Atoms, units
from ase.calculators.calculator import Calculator
from ase.io import read
from ase.md.velocitydistribution import Stationary, thermalize_momenta
from ase.md.verlet import VelocityVerlet
from tace_aiida.model.training import read_training_files

#: The 3BPA data in ``../shared`` beside the repository, or where TACE_3BPA_DIR points.
DATA_DIR = Path(os.environ.get("TACE_3BPA_DIR", Path(__file__).resolve().parents[2] / "shared" / "data" / "3bpa"))
REFERENCE_MODEL = "mace-torch"
TEMPERATURES_K = (300, 600, 1200)


@dataclass
class MatchedSettings:
    """Hyper-parameters shared by every model in the benchmark.

    ``max_edge_rank`` is the highest tensor rank of the edge (spherical/Cartesian)
    basis (MACE ``max_ell``); ``hidden_rank`` the highest rank of the node
    features (MACE ``max_L``); ``r_max`` in Å; ``time_budget_s`` caps the
    training wall time (s) when set. The learning rate falls by 0.8 after
    ``scheduler_patience`` epochs without a lower validation loss (mace-torch's
    default, 50; tace-aiida's own default is 5). With ``stage_two_start`` both
    switch at that epoch to mace-torch's stage two (energy weight 1000, forces
    100, learning rate 1e-3). Both clip a step's gradient norm at ``clip_grad_norm``
    (None: no clipping) and add ``weight_decay`` (an L2 penalty in Adam's update)
    as mace-torch does by default; mace-torch decays only the weights of its
    interaction linears and products, tace-aiida every weight. With
    ``fixed_bessel_frequencies`` tace-aiida keeps its radial Bessel frequencies at
    ``n pi / r_max`` as mace-torch always does (tace-aiida's own default trains them). The loss per batch is, as mace-torch's
    "weighted" loss, ``energy_weight * mean((ΔE / N)²) + forces_weight *
    mean(ΔF_i²)`` over structures and force components (eV², eV²/Å²); energies
    are referenced to the isolated-atom E0s of ``iso_atoms.xyz``.
    """

    num_layers: int = 2
    r_max: float = 5.0
    max_edge_rank: int = 3
    hidden_rank: int = 1
    channels: int = 32
    correlation: int = 3
    num_bessel: int = 8
    polynomial_p: int = 5
    radial_mlp: tuple[int, ...] = (64, 64, 64)
    batch_size: int = 5
    lr: float = 0.01
    amsgrad: bool = True
    ema_decay: float = 0.99
    energy_weight: float = 1.0
    forces_weight: float = 100.0
    epochs: int = 30
    scheduler_patience: int = 50
    stage_two_start: int | None = None
    clip_grad_norm: float | None = 10.0
    weight_decay: float = 5e-7
    fixed_bessel_frequencies: bool = True
    time_budget_s: float | None = None
    seed: int = 1
    dtype: str = "float32"
    valid_fraction: float = 0.1


@dataclass
class TrainedModel:
    """A trained model ready for evaluation.

    ``seconds_per_epoch`` is wall-clock time of one epoch: a pass over the
    training set plus the validation pass, excluding set-up and data loading.
    ``calculator`` must be picklable (it is re-loaded in a fresh process to
    measure memory).
    """

    name: str
    calculator: Calculator
    seconds_per_epoch: float
    epochs_run: int


Runner = Callable[[list[Atoms], list[Atoms], MatchedSettings, Path], TrainedModel]


# --------------------------------------------------------------------- data


def read_e0s(path: Path = DATA_DIR / "iso_atoms.xyz") -> dict[int, float]:
    """Isolated-atom energies (eV) keyed by atomic number."""
    return {int(a.numbers[0]): float(a.get_potential_energy()) for a in read(path, ":")}


def frame_key(atoms: Atoms) -> bytes:
    """Identity of a frame: species and positions rounded to 1e-5 Å."""
    return atoms.numbers.tobytes() + np.round(atoms.positions, 5).tobytes()


def _split(frames: list[Atoms], valid_fraction: float, seed: int) -> tuple[list[Atoms], list[Atoms]]:
    """Deterministic random train/valid split."""
    order = np.random.default_rng(seed).permutation(len(frames))
    n_valid = round(valid_fraction * len(frames))
    return [frames[i] for i in order[n_valid:]], [frames[i] for i in order[:n_valid]]


def equipartition_temperature(frames: Sequence[Atoms], reference_300K: Sequence[Atoms]) -> np.ndarray:
    """Per-frame temperature estimate (K) from the potential energy.

    For a classical harmonic molecule with f = 3N - 6 modes, <E - E_min> = f k_B T / 2.
    E_min is fixed so that the 300 K reference frames have exactly that mean.
    """
    dof = 3 * len(reference_300K[0]) - 6
    e_ref = np.array([a.get_potential_energy() for a in reference_300K])
    e_min = e_ref.mean() - 0.5 * dof * units.kB * 300.0
    energies = np.array([a.get_potential_energy() for a in frames])
    return 2.0 * (energies - e_min) / (dof * units.kB)


def mixed_temperature_labels(mixed: Sequence[Atoms], reference_300K: Sequence[Atoms]) -> list[int]:
    """MD temperature (K) of each ``train_mixedT`` frame.

    The file has no temperature key; it is the concatenation of equal blocks
    sampled at 300, 600 and 1200 K, in that order (all frames shared with
    ``train_300K`` lie in the first block). The block assignment is checked
    against the equipartition estimate: each block's mean must be within 15 %.
    """
    blocks = np.array_split(np.arange(len(mixed)), len(TEMPERATURES_K))
    estimate = equipartition_temperature(mixed, reference_300K)
    labels = np.empty(len(mixed), dtype=int)
    for temperature, block in zip(TEMPERATURES_K, blocks, strict=True):
        if abs(estimate[block].mean() / temperature - 1.0) > 0.15:
            raise ValueError(f"frames {block[0]}-{block[-1]} do not look like {temperature} K MD")
        labels[block] = temperature
    return labels.tolist()


def load_3bpa_split(
    data_dir: Path = DATA_DIR, seed: int = 1, valid_fraction: float = 0.1
) -> tuple[list[Atoms], list[Atoms], dict[str, list[Atoms]], dict[int, float]]:
    """Train/valid frames from ``train_300K``, test frames by temperature, E0s (eV).

    Test frames are the ``train_mixedT`` frames whose positions do not occur in
    ``train_300K``, grouped by :func:`mixed_temperature_labels` under keys like "300K".
    """
    frames_300 = read(data_dir / "train_300K.xyz", ":")
    mixed = read(data_dir / "train_mixedT.xyz", ":")
    labels = mixed_temperature_labels(mixed, frames_300)
    seen = {frame_key(a) for a in frames_300}
    test = {
        f"{t}K": [a for a, label in zip(mixed, labels, strict=True) if label == t and frame_key(a) not in seen]
        for t in TEMPERATURES_K
    }
    train, valid = _split(frames_300, valid_fraction, seed)
    return train, valid, test, read_e0s(data_dir / "iso_atoms.xyz")


def load_split_from_files(
    train_file: str | Path,
    test_files: Sequence[str | Path],
    isolated_atoms_file: str | Path,
    seed: int = 1,
    valid_fraction: float = 0.1,
    train_frames: int | None = None,
) -> tuple[list[Atoms], list[Atoms], dict[str, list[Atoms]], dict[int, float]]:
    """Any dataset in 3BPA's layout, as :func:`load_3bpa_split` returns 3BPA: train/valid frames from
    ``train_file`` (labelled extxyz, eV and eV/Å), test frames keyed by each test file's stem, E0s (eV) from
    ``isolated_atoms_file`` (one isolated atom per element; those of elements absent from the training frames
    are left out, as mace-torch sizes its E0s by them).

    With ``train_frames`` only that many frames of ``train_file`` are used, the same draw for every ``seed``;
    ``seed`` draws the validation split among them, as for 3BPA.
    """
    frames = read_training_files(train_file)
    if train_frames is not None:
        if not 0 < train_frames <= len(frames):
            raise ValueError(f"train_frames={train_frames}, but {train_file} holds {len(frames)} frames")
        frames = [frames[i] for i in sorted(np.random.default_rng(0).permutation(len(frames))[:train_frames])]
    train, valid = _split(frames, valid_fraction, seed)
    test = {Path(path).stem: read_training_files(path) for path in test_files}
    elements = {int(z) for atoms in frames for z in atoms.numbers}
    e0s = {z: energy for z, energy in read_e0s(Path(isolated_atoms_file)).items() if z in elements}
    if missing := elements - set(e0s):
        raise ValueError(f"{isolated_atoms_file} has no isolated atom of element(s) {sorted(missing)}")
    return train, valid, test, e0s


def periodic_test_cell(molecules: Sequence[Atoms] | None = None, per_side: int = 2, gap: float = 3.0) -> Atoms:
    """Cubic periodic cell of ``per_side**3`` molecules (216 atoms of 3BPA by default).

    The molecules (the first ``per_side**3`` of ``molecules``, by default of 3BPA's ``train_300K``) sit on a
    simple cubic grid with spacing = 2 * (largest centroid-to-atom distance) + ``gap`` (Å), so no two
    atoms of different molecules, periodic images included, are closer than ``gap``.
    """
    if molecules is None:
        molecules = read(DATA_DIR / "train_300K.xyz", f":{per_side**3}")
    molecules = list(molecules)[: per_side**3]
    if len(molecules) < per_side**3:
        raise ValueError(f"a cell of {per_side**3} molecules needs as many frames, got {len(molecules)}")
    centred = [m.positions - m.positions.mean(axis=0) for m in molecules]
    spacing = 2.0 * max(np.linalg.norm(p, axis=1).max() for p in centred) + gap
    grid = np.array(np.meshgrid(*[np.arange(per_side)] * 3, indexing="ij")).reshape(3, -1).T
    positions = np.concatenate([p + (g + 0.5) * spacing for p, g in zip(centred, grid, strict=True)])
    numbers = np.concatenate([m.numbers for m in molecules])
    return Atoms(numbers=numbers, positions=positions, cell=[per_side * spacing] * 3, pbc=True)


# ------------------------------------------------------------------ metrics


def _evaluate(calc: Calculator, atoms: Atoms) -> tuple[float, np.ndarray]:
    """Fresh (uncached) energy (eV) and forces (eV/Å) of ``atoms`` with ``calc``."""
    trial = atoms.copy()
    calc.reset()
    trial.calc = calc
    return trial.get_potential_energy(), trial.get_forces()


def _rmse_milli(errors: Sequence[float] | np.ndarray) -> float:
    """Root-mean-square of ``errors`` times 1000 (eV -> meV)."""
    return 1000.0 * float(np.sqrt(np.mean(np.square(errors))))


def energy_force_rmse(calc: Calculator, frames: Sequence[Atoms]) -> dict[str, float]:
    """Energy RMSE (meV, and meV/atom) and force-component RMSE (meV/Å)."""
    de, de_per_atom, df = [], [], []
    for atoms in frames:
        energy, forces = _evaluate(calc, atoms)
        de.append(energy - atoms.get_potential_energy())
        de_per_atom.append(de[-1] / len(atoms))
        df.append((forces - atoms.get_forces()).ravel())
    return {
        "energy_rmse_meV": _rmse_milli(de),
        "energy_rmse_meV_per_atom": _rmse_milli(de_per_atom),
        "forces_rmse_meV_per_A": _rmse_milli(np.concatenate(df)),
    }


def inference_ms_per_structure(
    calc: Calculator, frames: Sequence[Atoms], repeats: int = 3, warmup: int = 3
) -> float:
    """Mean wall time (ms) of one energy+forces call, after ``warmup`` untimed calls."""
    for atoms in list(frames)[:warmup]:
        _evaluate(calc, atoms)
    start = time.perf_counter()
    for _ in range(repeats):
        for atoms in frames:
            _evaluate(calc, atoms)
    return 1000.0 * (time.perf_counter() - start) / (repeats * len(frames))


def md_steps_per_second(calc: Calculator, atoms: Atoms, steps: int = 100, seed: int = 1) -> float:
    """NVE velocity-Verlet throughput (steps/s), 1 fs steps from Maxwell-Boltzmann 300 K.

    The first step (initial force call plus one step) is an untimed warm-up.
    """
    system = atoms.copy()
    system.calc = calc
    calc.reset()
    thermalize_momenta(system, temperature_K=300.0, rng=np.random.default_rng(seed))
    Stationary(system)
    dynamics = VelocityVerlet(system, timestep=1.0 * units.fs)
    dynamics.run(1)
    start = time.perf_counter()
    dynamics.run(steps)
    return steps / (time.perf_counter() - start)


def _status_mib(field: str) -> float:
    """A memory field of /proc/self/status (e.g. VmRSS, VmHWM) in MiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024.0
    raise KeyError(field)


def _memory_probe(calc_bytes: bytes, atoms: Atoms) -> dict[str, float]:
    """Runs in a fresh process: load the calculator, evaluate once, read RSS."""
    calc = pickle.loads(calc_bytes)
    loaded = _status_mib("VmRSS")
    _evaluate(calc, atoms)
    peak = _status_mib("VmHWM")
    return {"peak_rss_MiB": peak, "eval_rss_increase_MiB": peak - loaded}


def peak_memory_mib(calc: Calculator, atoms: Atoms) -> dict[str, float]:
    """Peak resident memory (MiB) of one energy+forces evaluation, in a fresh process.

    The calculator is pickled into a newly spawned Python process, which records
    its RSS after loading it and its high-water RSS (VmHWM, = ru_maxrss) after one
    evaluation on ``atoms``. ``peak_rss_MiB`` includes the interpreter, torch and
    the weights; ``eval_rss_increase_MiB`` is the part due to the evaluation.
    The spawned process re-imports the calling script, so scripts need an
    ``if __name__ == "__main__":`` guard.
    """
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=1, mp_context=context) as pool:
        return pool.submit(_memory_probe, pickle.dumps(calc), atoms).result()


def benchmark_metrics(
    model: TrainedModel,
    test_by_temperature: Mapping[str, Sequence[Atoms]],
    cell: Atoms,
    repeats: int = 3,
    md_steps: int = 100,
) -> dict[str, float]:
    """All benchmark figures of one trained model, keyed by label with units.

    Errors use every test frame; inference timing uses the first 10 test frames
    and ``cell``; MD throughput the first test frame and ``cell``; memory ``cell``.
    """
    metrics = {"train time per epoch (s)": model.seconds_per_epoch, "epochs run": model.epochs_run}
    for temperature, frames in test_by_temperature.items():
        errors = energy_force_rmse(model.calculator, frames)
        metrics[f"E RMSE {temperature} (meV)"] = errors["energy_rmse_meV"]
        metrics[f"F RMSE {temperature} (meV/Å)"] = errors["forces_rmse_meV_per_A"]
    molecules = [a for frames in test_by_temperature.values() for a in frames][:10]
    size = len(molecules[0])
    metrics[f"inference {size} atoms (ms)"] = inference_ms_per_structure(model.calculator, molecules, repeats)
    metrics[f"inference {len(cell)} atoms (ms)"] = inference_ms_per_structure(model.calculator, [cell], repeats)
    metrics[f"MD {size} atoms (steps/s)"] = md_steps_per_second(model.calculator, molecules[0], md_steps)
    metrics[f"MD {len(cell)} atoms (steps/s)"] = md_steps_per_second(model.calculator, cell, md_steps)
    memory = peak_memory_mib(model.calculator, cell)
    metrics[f"peak RSS {len(cell)} atoms (MiB)"] = memory["peak_rss_MiB"]
    metrics[f"eval RSS increase {len(cell)} atoms (MiB)"] = memory["eval_rss_increase_MiB"]
    return metrics


# ------------------------------------------------------------------- report


def _ratio(value: float, reference: float) -> str:
    """``value / reference`` formatted, or n/a when undefined."""
    if reference == 0 or math.isnan(reference) or math.isnan(value):
        return "n/a"
    return f"{value / reference:.2f}×"


def format_table(rows: Mapping[str, Mapping[str, float]], reference: str = REFERENCE_MODEL) -> str:
    """Markdown table: one row per metric, one column per model, plus ratios to ``reference``.

    ``rows`` maps model name -> {metric label: value}; metrics are taken in the
    order first seen, and a model lacking a metric shows "–".
    """
    models = list(rows)
    compared = [m for m in models if m != reference] if reference in rows else []
    metrics = list(dict.fromkeys(k for values in rows.values() for k in values))
    header = ["metric", *models, *(f"{m} / {reference}" for m in compared)]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for metric in metrics:
        cells = [f"{rows[m][metric]:.4g}" if metric in rows[m] else "–" for m in models]
        cells += [_ratio(rows[m].get(metric, math.nan), rows[reference].get(metric, math.nan)) for m in compared]
        lines.append("| " + " | ".join([metric, *cells]) + " |")
    return "\n".join(lines)


def print_and_save(lines: Sequence[str], output: Path, args, **content) -> None:
    """Print the table ``lines`` and write it to ``output`` as JSON with the command-line ``args`` and ``content``."""
    table = "\n".join(lines)
    print(table)
    arguments = {key: str(value) for key, value in vars(args).items()}
    output.write_text(json.dumps({"arguments": arguments, **content, "table": table}, indent=1))
