"""Training loop: data preparation, loss, optimiser with EMA and plateau schedule, checkpoints.

Runs anywhere torch runs (a laptop, a GPU worker without any database); the AiiDA layer calls it
through the ``tace-train`` command.
"""

from __future__ import annotations

import json
import logging
import math
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import TypeVar

import numpy as np
import torch
from ase import Atoms
from torch.optim.swa_utils import AveragedModel
from tqdm import tqdm

from . import keys
from .checkpoint import load_model, save_checkpoint
from .config import TrainingConfig
from .data import LabelKeys, collate, frames_to_graphs, resolve_device, to_device
from .evaluation import evaluate
from .feature_uncertainty import fit_feature_uncertainty
from .frames import FrameColumns, is_frame_file, read_columns
from .graph_store import cache_directory, store_graphs
from .potential import CartesianTensorPotential, ModelConfig
from .restart import RestartError, load_restart, save_restart
from .statistics import average_num_neighbors, fit_atomic_energies, interaction_energy_statistics
from .validation import read_structures

logger = logging.getLogger(__name__)
Tensor = torch.Tensor
T = TypeVar("T")


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def training_sources(path: str | Path | Sequence[str | Path]) -> list[tuple[str, FrameColumns | list[Atoms]]]:
    """Each file of ``path`` (an extxyz file, an HDF5 frame store, ``.h5``, :mod:`.frames`, or a list
    of such files), in order, with its frames: a store's as columns, an extxyz file's as Atoms."""
    paths = [path] if isinstance(path, (str, Path)) else path
    sources = [(str(item), read_columns(item) if is_frame_file(item) else read_structures(item)) for item in paths]
    if not any(len(frames) for _, frames in sources):
        raise ValueError(f"{path} holds no structures")
    return sources


def read_training_files(path: str | Path | Sequence[str | Path]) -> list[Atoms]:
    """The frames of :func:`training_sources` as Atoms, in order."""
    return [atoms for _, frames in training_sources(path) for atoms in as_atoms(frames)]


def as_atoms(frames: FrameColumns | list[Atoms]) -> list[Atoms]:
    """The frames of one source as Atoms (a store's labels on a SinglePointCalculator)."""
    if isinstance(frames, FrameColumns):
        return [frames.frame(index) for index in range(len(frames))]
    return frames


def frame_numbers(frames: FrameColumns | list[Atoms]) -> np.ndarray:
    """[n_atoms] atomic numbers of all frames."""
    if isinstance(frames, FrameColumns):
        return frames.numbers
    return np.concatenate([atoms.numbers for atoms in frames]) if frames else np.zeros(0, dtype=int)


def source_species(sources: Sequence[tuple[str, FrameColumns | list[Atoms]]]) -> set[int]:
    """Atomic numbers present in any frame of ``sources``."""
    return {int(z) for _, frames in sources for z in np.unique(frame_numbers(frames))}


def source_graphs(sources: Sequence[tuple[str, FrameColumns | list[Atoms]]], atomic_numbers: Sequence[int], r_max: float,
                  keys: LabelKeys, cache_dir: Path | None) -> list[dict[str, Tensor]]:
    """The graphs of every frame of ``sources``, in order: a store's built from its columns with
    edges cached in ``cache_dir`` (:func:`.graph_store.store_graphs`), an extxyz file's from Atoms."""
    graphs = []
    for path, frames in sources:
        if isinstance(frames, FrameColumns):
            graphs += store_graphs(path, frames, atomic_numbers, r_max, keys, cache_dir=cache_dir)
        else:
            graphs += frames_to_graphs(frames, path, atomic_numbers, r_max, keys)
    return graphs


def split_train_valid(items: Sequence[T], valid_fraction: float, seed: int) -> tuple[list[T], list[T]]:
    """Random split with a fixed seed; at least one validation item when the fraction is > 0."""
    order = np.random.default_rng(seed).permutation(len(items))
    n_valid = max(1, round(valid_fraction * len(items))) if valid_fraction > 0 else 0
    if n_valid >= len(items):
        raise ValueError(f"valid_fraction={valid_fraction} leaves no training structure out of {len(items)}")
    return [items[i] for i in order[n_valid:]], [items[i] for i in order[:n_valid]]


def bootstrap_sample(items: Sequence[T], seed: int) -> list[T]:
    """As many items as given, drawn with replacement (ensemble members differ in data too)."""
    picks = np.random.default_rng(seed).integers(0, len(items), size=len(items))
    return [items[i] for i in picks]


def reference_energies(config: TrainingConfig, atomic_numbers: Sequence[int], graphs: Sequence[dict]) -> list[float]:
    """E0 per species (eV): given in the config, read from isolated atoms, or fitted."""
    if config.atomic_energies is not None:
        table = config.atomic_energies
        source = "the 'atomic_energies' setting"
    elif config.e0s_file is not None:
        frames = read_structures(config.e0s_file)
        species = sorted({int(z) for atoms in frames for z in atoms.numbers})
        isolated = frames_to_graphs(frames, config.e0s_file, species, 1.0, LabelKeys(config.energy_key))
        table = {}
        for index, (atoms, graph) in enumerate(zip(frames, isolated, strict=True)):
            if len(atoms) != 1:
                raise ValueError(f"{config.e0s_file}, frame {index}: {atoms.get_chemical_formula()} is no isolated atom "
                                 f"(an E0 file holds one atom per frame)")
            if not bool(graph[keys.HAS_ENERGY]):
                raise ValueError(f"{config.e0s_file}, frame {index}: no energy label under {config.energy_key!r}")
            table[int(atoms.numbers[0])] = float(graph[keys.ENERGY])
        source = config.e0s_file
    else:
        return fit_atomic_energies(graphs, len(atomic_numbers))
    missing = [z for z in atomic_numbers if z not in table]
    if missing:
        raise ValueError(f"{source} gives no reference energy for atomic numbers {missing}")
    return [table[z] for z in atomic_numbers]


def check_label_coverage(graphs: Sequence[dict[str, Tensor]], source: str, config: TrainingConfig) -> None:
    """Every frame has the energy and forces that the loss weighs (weight > 0); stress is optional."""
    for name, key, weight in (("energy", config.energy_key, config.energy_weight),
                              ("forces", config.forces_key, config.forces_weight)):
        missing = [index for index, graph in enumerate(graphs) if weight > 0 and not bool(graph[f"has_{name}"])]
        if missing:
            raise ValueError(f"{source}, frame {missing[0]}: no {name} label under {key!r} ({len(missing)} of "
                             f"{len(graphs)} frames lack one; {name}_weight: 0 trains without {name})")


def check_tensor_labels(graphs: Sequence[dict[str, Tensor]], source: str, config: TrainingConfig) -> None:
    """A model with a dipole or polarizability head needs some training frames labelled with it."""
    for name, key in (("dipole", config.dipole_key), ("polarizability", config.polarizability_key)):
        if config.model.get(name) and getattr(config, f"{name}_weight") > 0:
            if not any(bool(graph.get(f"has_{name}", False)) for graph in graphs):
                raise ValueError(f"{source}: model setting {name}: true, but no molecule has a {name} label under "
                                 f"{key!r} (labels of periodic cells are not read)")


def field_response_labelled(graphs: Sequence[dict[str, Tensor]], config: TrainingConfig) -> bool:
    """Whether some of ``graphs`` have polarizability or Born-charge labels of nonzero weight: a ``field_dipole``
    model's are second derivatives, worth three more backward passes per batch only then."""
    weighted = [(keys.HAS_POLARIZABILITY, config.polarizability_weight), (keys.HAS_BORN_CHARGES, config.born_charges_weight)]
    return any(weight > 0 and any(bool(g.get(key, False)) for g in graphs) for key, weight in weighted)


@dataclass
class PreparedData:
    train: list[dict[str, Tensor]]
    valid: list[dict[str, Tensor]]
    test: list[dict[str, Tensor]]
    model_config: ModelConfig


def prepare_data(config: TrainingConfig, base_model: ModelConfig | None = None) -> PreparedData:
    """Read, check, convert and split the data; derive species, E0s and statistics (or reuse a base model's).

    Every file is read and every structure and label checked (:func:`source_graphs`,
    :func:`check_label_coverage`) before anything is trained or written; the edges of frame
    stores are cached in ``config.graph_cache_dir`` (:func:`.graph_store.cache_directory`). The
    species are those of the training and validation files (all ensemble members get the same,
    bootstrapped or not).
    """
    label_keys = LabelKeys(config.energy_key, config.forces_key, config.stress_key, config.dipole_key,
                           config.polarizability_key, config.born_charges_key)
    files = {"train": config.train_file, "valid": config.valid_file, "test": config.test_file}
    sources = {name: training_sources(path) for name, path in files.items() if path is not None}
    settings = base_model.to_dict() if base_model is not None else dict(config.model)
    r_max = settings.get("r_max", ModelConfig.r_max)
    if base_model is not None:
        atomic_numbers = base_model.atomic_numbers
    else:
        atomic_numbers = sorted(source_species(sources["train"] + sources.get("valid", [])))
    cache_dir = cache_directory(config.graph_cache_dir)
    graphs = {name: source_graphs(sources[name], atomic_numbers, r_max, label_keys, cache_dir) for name in sources}
    for name in ("train", "valid"):
        if name in graphs:
            check_label_coverage(graphs[name], files[name], config)
    check_tensor_labels(graphs["train"], files["train"], config)
    if "valid" in graphs:
        train, valid = graphs["train"], graphs["valid"]
    else:
        train, valid = split_train_valid(graphs["train"], config.valid_fraction, config.seed)
    if config.bootstrap:
        train = bootstrap_sample(train, config.seed)
    if base_model is None:
        e0s = reference_energies(config, atomic_numbers, train)
        shift, scale = interaction_energy_statistics(train, e0s)
        settings.update(
            atomic_numbers=atomic_numbers,
            atomic_energies=e0s,
            avg_num_neighbors=average_num_neighbors(train),
            scale=scale,
            shift=shift,
        )
    return PreparedData(train, valid, graphs.get("test", []), ModelConfig.from_dict(settings))


def ema_with_warmup(decay: float):
    """EMA update whose decay grows as ``min(decay, (1+n)/(10+n))`` over the first updates.

    Without the warm-up the average of a short run (few hundred steps) stays close to the random
    initial weights. The decay is computed on the parameters' device: reading the count back to the
    host would wait for a GPU once per parameter and step.
    """

    def update(averaged: Tensor, current: Tensor, num_averaged: Tensor) -> Tensor:
        count = num_averaged.to(torch.float64)  # as exact as the Python float it replaces, in any parameter dtype
        step_decay = torch.clamp((1.0 + count) / (10.0 + count), max=decay)
        return step_decay * averaged + (1.0 - step_decay) * current

    return update


def loss_function(out, batch: dict[str, Tensor], config: TrainingConfig) -> Tensor:
    """Weighted mean squared errors of energy per atom, force components and stress components.

    Unlabelled entries are masked with ``torch.where`` (never multiplied by a zero mask), and the
    predicted stress is the virial over the volume of the labelled cells only: a molecule's zero
    volume would give ``0 * inf = nan`` in the loss or its gradient.
    """
    energy_error = (out.energy - batch[keys.ENERGY]) / batch[keys.NUM_ATOMS]
    loss = config.energy_weight * masked_mean(energy_error**2, batch[keys.HAS_ENERGY])
    force_mask = batch[keys.HAS_FORCES][batch[keys.BATCH]][:, None]
    loss = loss + config.forces_weight * masked_mean((out.forces - batch[keys.FORCES]) ** 2, force_mask)
    if out.virial is not None:
        has_stress = batch[keys.HAS_STRESS].bool()[:, None, None]
        volume = torch.where(has_stress, torch.linalg.det(batch[keys.CELL]).abs()[:, None, None], 1.0)
        loss = loss + config.stress_weight * masked_mean((-out.virial / volume - batch[keys.STRESS]) ** 2, has_stress)
    if out.dipole is not None and keys.DIPOLE in batch:
        has_dipole = batch[keys.HAS_DIPOLE][:, None]
        loss = loss + config.dipole_weight * masked_mean((out.dipole - batch[keys.DIPOLE]) ** 2, has_dipole)
    if out.polarizability is not None and keys.POLARIZABILITY in batch:
        has_polarizability = batch[keys.HAS_POLARIZABILITY][:, None, None]
        error = out.polarizability - batch[keys.POLARIZABILITY]
        loss = loss + config.polarizability_weight * masked_mean(error**2, has_polarizability)
    if out.born_charges is not None and keys.BORN_CHARGES in batch:
        has_born_charges = batch[keys.HAS_BORN_CHARGES][batch[keys.BATCH]][:, None, None]
        error = out.born_charges - batch[keys.BORN_CHARGES]
        loss = loss + config.born_charges_weight * masked_mean(error**2, has_born_charges)
    return loss


def stage_two_config(config: TrainingConfig) -> TrainingConfig:
    """``config`` with the energy and force weights of its ``stage_two``."""
    return replace(config, energy_weight=config.stage_two.energy_weight, forces_weight=config.stage_two.forces_weight)


def masked_mean(values: Tensor, mask: Tensor) -> Tensor:
    """Mean of ``values`` with the entries where ``mask`` is false (or 0) counted as zero."""
    return torch.where(mask.bool(), values, torch.zeros_like(values)).mean()


def _epoch_batches(graphs: Sequence[dict[str, Tensor]], batch_size: int, generator: torch.Generator) -> list[dict]:
    order = torch.randperm(len(graphs), generator=generator).tolist()
    return [collate([graphs[i] for i in order[s : s + batch_size]]) for s in range(0, len(order), batch_size)]


def train(config: TrainingConfig) -> dict:
    """Train one potential as ``config`` says; returns a summary (best epoch, metrics, paths).

    Writes ``checkpoint_name`` (EMA weights of the epoch with the lowest validation loss, or
    training loss when there is no validation set) and ``metrics_name`` (one JSON object per
    epoch) into ``output_dir``. With ``init_checkpoint`` the model settings, species and
    statistics come from that checkpoint (fine-tuning).
    """
    previous_dtype = torch.get_default_dtype()
    torch.set_default_dtype(getattr(torch, config.dtype))
    try:
        return _train(config)
    finally:
        torch.set_default_dtype(previous_dtype)


@dataclass
class Progress:
    """How far a training has got; saved in every restart file, and what a resumed training continues from."""

    epoch: int = -1  # the last completed epoch (0-based)
    best: dict = field(default_factory=lambda: {"selection_loss": math.inf, "epoch": -1})  # the best epoch's record
    best_weights: dict[str, Tensor] | None = None  # the evaluated (averaged) weights of the best epoch
    stale_epochs: int = 0  # epochs since the selection loss last fell
    records: list[dict] = field(default_factory=list)  # one per completed epoch, as in the metrics file
    trained_seconds: float = 0.0  # over every job of this training, for ``time_budget``
    stage_two_from: int | None = None  # the epoch stage two started at

    def as_dict(self) -> dict:
        return {item.name: getattr(self, item.name) for item in fields(self)}

    def update_best(self, record: dict, selection_loss: float, evaluated: CartesianTensorPotential) -> bool:
        """Count the epoch of ``record``; keep its weights if ``selection_loss`` is the lowest so far (returns True)."""
        if not selection_loss < self.best["selection_loss"]:  # a NaN never counts as better
            self.stale_epochs += 1
            return False
        self.best = {**record, "selection_loss": selection_loss}
        self.best_weights = {key: value.detach().clone() for key, value in evaluated.state_dict().items()}
        self.stale_epochs = 0
        return True


@dataclass
class Optimisation:
    """The trained model and what updates it: optimiser, plateau schedule, averaged (EMA) weights, batch order."""

    model: CartesianTensorPotential
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.ReduceLROnPlateau
    ema: AveragedModel | None
    generator: torch.Generator

    @classmethod
    def create(cls, model: CartesianTensorPotential, config: TrainingConfig) -> Optimisation:
        optimizer_class = torch.optim.AdamW if config.optimizer == "adamw" else torch.optim.Adam
        optimizer = optimizer_class(model.parameters(), lr=config.lr, amsgrad=config.amsgrad,
                                    weight_decay=config.weight_decay)
        scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, factor=config.scheduler_factor,
                                                               patience=config.scheduler_patience)
        ema = AveragedModel(model, avg_fn=ema_with_warmup(config.ema_decay)) if config.ema_decay else None
        return cls(model, optimizer, scheduler, ema, torch.Generator().manual_seed(config.seed))

    @property
    def evaluated(self) -> CartesianTensorPotential:
        """The weights that are validated and saved: the averaged ones with EMA, else the trained ones."""
        return self.ema.module if self.ema is not None else self.model

    @property
    def lr(self) -> float:
        return self.optimizer.param_groups[0]["lr"]

    def set_lr(self, lr: float) -> None:
        for group in self.optimizer.param_groups:
            group["lr"] = lr

    def train_epoch(self, graphs: Sequence[dict[str, Tensor]], config: TrainingConfig, loss_config: TrainingConfig,
                    device: torch.device, compute_stress: bool, compute_field_response: bool) -> float:
        """One pass over ``graphs`` in a new random order of batches; returns the mean loss of the batches."""
        # Summed on the device and read once per epoch: a read per batch would wait for a GPU at every step.
        epoch_loss = torch.zeros((), dtype=torch.float64, device=device)
        batches = _epoch_batches(graphs, config.batch_size, self.generator)
        for batch in batches:
            batch = to_device(batch, device)
            self.optimizer.zero_grad(set_to_none=True)
            out = self.model(batch, compute_forces=True, compute_stress=compute_stress, training=True,
                             compute_field_response=compute_field_response)
            loss = loss_function(out, batch, loss_config)
            loss.backward()
            if config.clip_grad_norm is not None:
                torch.nn.utils.clip_grad_norm_(self.model.parameters(), config.clip_grad_norm)
            self.optimizer.step()
            if self.ema is not None:
                self.ema.update_parameters(self.model)
            epoch_loss += loss.detach().double() / len(batches)
        return epoch_loss.item()

    def state(self) -> dict:
        """The restart file's entries of these objects."""
        return {"model": self.model.state_dict(), "ema": self.ema.state_dict() if self.ema is not None else None,
                "optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
                "generator": self.generator.get_state()}

    def load_state(self, state: dict, source: str) -> None:
        """Take the entries of :meth:`state` saved in the restart file ``source``."""
        self.model.load_state_dict(state["model"])
        if (self.ema is None) != (state["ema"] is None):
            raise RestartError(f"{source} was written with ema_decay {state['training']['ema_decay']}")
        if self.ema is not None:
            self.ema.load_state_dict(state["ema"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.generator.set_state(state["generator"])


def _train(config: TrainingConfig) -> dict:
    seed_everything(config.seed)
    device = resolve_device(config.device)
    base_model, base_metadata = (None, {})
    if config.init_checkpoint is not None:
        base_model, base_metadata = load_model(config.init_checkpoint, device=device, dtype=torch.get_default_dtype())
    data = prepare_data(config, base_model.config if base_model is not None else None)
    output_dir = Path(config.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    metrics_path = output_dir / config.metrics_name
    checkpoint_path = output_dir / config.checkpoint_name
    restart_path = output_dir / config.restart_name
    model = base_model if base_model is not None else CartesianTensorPotential(data.model_config).to(device)
    model.train()
    logger.info("model with %d parameters, species %s", sum(p.numel() for p in model.parameters()),
                data.model_config.atomic_numbers)
    steps = Optimisation.create(model, config)
    compute_stress = any(bool(g[keys.HAS_STRESS]) for g in data.train)
    compute_field_response = data.model_config.field_dipole and field_response_labelled(data.train, config)

    progress = Progress()
    if config.resume_from is not None:
        progress = _resume(config, steps, data.model_config, checkpoint_path, base_metadata, device)
    metrics_path.write_text("".join(json.dumps(record) + "\n" for record in progress.records))
    stage_two_loss = stage_two_config(config) if config.stage_two is not None else None
    first_epoch = progress.epoch + 1
    started = time.monotonic() - progress.trained_seconds  # the time budget counts the earlier jobs too
    bar = tqdm(range(first_epoch, config.max_epochs), desc="training", unit="epoch",
               disable=not config.progress_bar, initial=first_epoch, total=config.max_epochs)
    stop_reason: str | None = None
    for epoch in bar:
        if stage_two_loss is not None and progress.stage_two_from is None and (
            epoch >= config.stage_two.start or progress.stale_epochs >= config.patience
        ):
            _start_stage_two(epoch, config, steps, progress)
        loss_config = config if progress.stage_two_from is None else stage_two_loss
        record, selection_loss = _run_epoch(epoch, steps, data, config, loss_config, progress, device,
                                            compute_stress, compute_field_response)
        progress.epoch = epoch
        progress.records.append(record)
        with metrics_path.open("a") as handle:
            handle.write(json.dumps(record) + "\n")
        bar.set_postfix(loss=f"{record['train_loss']:.4g}", valid=f"{selection_loss:.4g}")
        if progress.update_best(record, selection_loss, steps.evaluated):
            save_checkpoint(checkpoint_path, steps.evaluated, _metadata(config, record, base_metadata))
        progress.trained_seconds = time.monotonic() - started
        save_restart(restart_path, {"training": config.to_dict(), **progress.as_dict(), **steps.state()})
        stop_reason = _stop_reason(config, progress, started, last_stage=stage_two_loss is None or
                                   progress.stage_two_from is not None)
        if stop_reason is not None:
            break
    bar.close()
    best_model, best_metadata = load_model(checkpoint_path, device=device, dtype=torch.get_default_dtype())
    add_feature_uncertainty(checkpoint_path, best_model, best_metadata, data, config, device)
    test_metrics = evaluate(best_model, data.test, config.valid_batch_size, device) if data.test else {}
    return {
        "test": test_metrics,
        "checkpoint": str(checkpoint_path),
        "metrics_file": str(metrics_path),
        "best_epoch": progress.best["epoch"],
        "best": progress.best,
        "epochs_run": progress.epoch + 1,
        "resumed_after_epoch": first_epoch - 1 if config.resume_from is not None else None,
        "stop_reason": stop_reason or "max_epochs",
        "stage_two_from": progress.stage_two_from,
        "wall_seconds": time.monotonic() - started,
        "num_train": len(data.train),
        "num_valid": len(data.valid),
    }


def _start_stage_two(epoch: int, config: TrainingConfig, steps: Optimisation, progress: Progress) -> None:
    """From ``epoch`` on: stage two's learning rate, and the best epoch chosen among this stage's only."""
    progress.stage_two_from, progress.best, progress.stale_epochs = epoch, Progress().best, 0
    steps.set_lr(config.stage_two.lr)
    logger.info("stage two from epoch %d: %s", epoch, config.stage_two)


def _stop_reason(config: TrainingConfig, progress: Progress, started: float, last_stage: bool) -> str | None:
    """Why the training ends after this epoch (``early_stopping`` in its last stage, ``time_budget``), or None."""
    if last_stage and progress.stale_epochs >= config.patience:
        return "early_stopping"
    if config.time_budget is not None and time.monotonic() - started > config.time_budget:
        return "time_budget"
    return None


def _run_epoch(epoch: int, steps: Optimisation, data: PreparedData, config: TrainingConfig,
               loss_config: TrainingConfig, progress: Progress, device: torch.device, compute_stress: bool,
               compute_field_response: bool) -> tuple[dict, float]:
    """Train one epoch, validate, step the plateau schedule (held in stage two); the epoch's record and the loss
    that selects the best epoch (validation loss, or training loss without validation frames)."""
    epoch_start = time.monotonic()
    train_loss = steps.train_epoch(data.train, config, loss_config, device, compute_stress, compute_field_response)
    if not math.isfinite(train_loss):
        raise FloatingPointError(f"loss became {train_loss} in epoch {epoch}; lower the learning rate")
    valid_loss, valid_metrics = validation_loss(steps.evaluated, data.valid, loss_config, device)
    selection_loss = valid_loss if data.valid else train_loss
    if progress.stage_two_from is None:
        steps.scheduler.step(selection_loss)
    record = {
        "epoch": epoch,
        "stage": 1 if progress.stage_two_from is None else 2,
        "train_loss": train_loss,
        "valid_loss": valid_loss,
        "lr": steps.lr,
        "epoch_seconds": time.monotonic() - epoch_start,
        **{f"valid_{k}": v for k, v in valid_metrics.items()},
    }
    return record, selection_loss


def add_feature_uncertainty(path: Path, model: CartesianTensorPotential, metadata: dict, data: PreparedData,
                            config: TrainingConfig, device: torch.device) -> None:
    """Fit the single-model uncertainty (:mod:`.feature_uncertainty`) of the best ``model`` and store it in
    its checkpoint; without force labels there is nothing to fit its scale on, and the checkpoint stays as it is."""
    try:
        fitted = fit_feature_uncertainty(model, data.train, data.valid, config.valid_batch_size, device)
    except ValueError as error:
        logger.warning("no feature uncertainty stored in %s: %s", path, error)
        return
    save_checkpoint(path, model, metadata, feature_uncertainty=fitted.state())
    logger.info("feature uncertainty fitted: scale %.4g eV/Å", fitted.scale)


def _resume(config: TrainingConfig, steps: Optimisation, model_config: ModelConfig, checkpoint_path: Path,
            base_metadata: dict, device: torch.device) -> Progress:
    """Load the state of ``config.resume_from`` into ``steps``; write its best weights so far to ``checkpoint_path``
    (the output folder may be a new one); return its progress."""
    state = load_restart(config.resume_from, config.to_dict())
    steps.load_state(state, str(config.resume_from))
    progress = Progress(**{key: state[key] for key in ("epoch", "best", "best_weights", "stale_epochs", "records",
                                                       "trained_seconds")},
                        stage_two_from=state.get("stage_two_from"))  # absent in files written before stage two existed
    if progress.best_weights is not None:
        best_model = CartesianTensorPotential(model_config).to(device)
        best_model.load_state_dict(progress.best_weights)
        save_checkpoint(checkpoint_path, best_model, _metadata(config, progress.best, base_metadata))
    logger.info("resumed after epoch %d from %s", progress.epoch, config.resume_from)
    return progress


def validation_loss(
    model: CartesianTensorPotential, graphs: Sequence[dict[str, Tensor]], config: TrainingConfig, device: torch.device
) -> tuple[float | None, dict[str, float]]:
    """(loss, error metrics) on the validation graphs, as the weighted MSEs of the loss; None without graphs."""
    if not graphs:
        return None, {}
    metrics = evaluate(model, graphs, config.valid_batch_size, device)
    loss = config.energy_weight * metrics.get("energy_per_atom_rmse", 0.0) ** 2
    loss += config.forces_weight * metrics.get("forces_rmse", 0.0) ** 2
    loss += config.stress_weight * metrics.get("stress_rmse", 0.0) ** 2
    loss += config.dipole_weight * metrics.get("dipole_rmse", 0.0) ** 2
    loss += config.polarizability_weight * metrics.get("polarizability_rmse", 0.0) ** 2
    loss += config.born_charges_weight * metrics.get("born_charges_rmse", 0.0) ** 2
    return loss, metrics


def _metadata(config: TrainingConfig, record: dict, base_metadata: dict) -> dict:
    return {
        "training": config.to_dict(),
        "best_epoch_metrics": record,
        "fine_tuned_from": config.init_checkpoint,
        "base_training": base_metadata.get("training"),
    }
