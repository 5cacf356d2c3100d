"""Console scripts: ``tace-train CONFIG.yaml`` and ``tace-eval --checkpoint ... --data ...``."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from dataclasses import replace

from .checkpoint import load_model
from .data import LabelKeys, frames_to_graphs, resolve_device
from .evaluation import evaluate
from .validation import read_structures


def _fail(parser: argparse.ArgumentParser, status: int, error: str, exception: Exception) -> None:
    """Exit with ``status``: the reason as JSON on stdout's last line (``{"error": ..., "message": ...}``,
    read by the ``tace.train`` parser) and as one line on stderr for a person."""
    print(json.dumps({"error": error, "message": str(exception)}), flush=True)
    parser.exit(status, f"tace-train: {exception}\n")


def train_main(argv: list[str] | None = None) -> int:
    """Train a potential from a YAML config; prints the summary (or the error) as JSON on the last line."""
    parser = argparse.ArgumentParser(prog="tace-train", description="Train a Cartesian-tensor potential.")
    parser.add_argument("config", help="YAML file of training settings (see README)")
    parser.add_argument("--seed", type=int, help="override the config's seed (ensemble members)")
    parser.add_argument("--device", help="override the config's device: auto, cpu, cuda, cuda:1 ...")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar (batch jobs)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")

    from .config import TrainingConfig
    from .training import train

    overrides = {"seed": args.seed, "device": args.device, "progress_bar": False if args.no_progress else None}
    try:
        config = TrainingConfig.from_yaml(args.config)
        config = replace(config, **{key: value for key, value in overrides.items() if value is not None})
    except ValueError as error:
        _fail(parser, 2, "invalid_settings", error)
    try:
        summary = train(config)
    except FloatingPointError as error:
        _fail(parser, 1, "nan_loss", error)
    except ValueError as error:
        _fail(parser, 1, "invalid_input", error)
    except OSError as error:  # a file that could not be read or written: the disk, the network file system
        _fail(parser, 1, "io_error", error)
    print(json.dumps(summary))
    return 0


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} is not a positive integer")
    return value


def eval_main(argv: list[str] | None = None) -> int:
    """Print energy/force/stress (and dipole/polarizability/Born charge) MAE and RMSE of a checkpoint on an extxyz file."""
    parser = argparse.ArgumentParser(prog="tace-eval", description="Errors of a potential on labelled structures.")
    parser.add_argument("--checkpoint", required=True, help="checkpoint written by tace-train")
    parser.add_argument("--data", required=True, help="extxyz file with energy/forces labels")
    parser.add_argument("--energy-key", default="energy")
    parser.add_argument("--forces-key", default="forces")
    parser.add_argument("--stress-key", default="stress")
    parser.add_argument("--dipole-key", default="dipole", help="read by models with a dipole head")
    parser.add_argument("--polarizability-key", default="polarizability", help="read by models with a polarizability head")
    parser.add_argument("--born-charges-key", default="born_effective_charges",
                        help="per-atom Born effective charges (9 values, e), read by field_dipole models")
    parser.add_argument("--batch-size", type=_positive_int, default=10)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--json", action="store_true", help="print the metrics as one JSON object")
    args = parser.parse_args(argv)

    try:
        device = resolve_device(args.device)
    except RuntimeError as error:
        parser.error(f"--device {args.device!r}: {error}")
    try:
        model, _ = load_model(args.checkpoint, device=device)
        keys = LabelKeys(args.energy_key, args.forces_key, args.stress_key, args.dipole_key, args.polarizability_key,
                         args.born_charges_key)
        dtype = next(model.parameters()).dtype
        graphs = frames_to_graphs(read_structures(args.data), args.data, model.config.atomic_numbers, model.config.r_max, keys, dtype)
        names = ("energy", "forces", "stress", "dipole", "polarizability", "born_charges")
        if not any(bool(g[f"has_{name}"]) for g in graphs for name in names):
            raise ValueError(f"{args.data} has no labels under {', '.join(repr(getattr(keys, n)) for n in names)}")
    except ValueError as error:
        parser.exit(1, f"tace-eval: {error}\n")
    metrics = evaluate(model, graphs, args.batch_size, device)
    if args.json:
        print(json.dumps({"structures": len(graphs), **metrics}))
        return 0
    units = {"energy": "meV", "energy_per_atom": "meV/atom", "forces": "meV/Å", "stress": "meV/Å^3",
             "dipole": "me Å", "polarizability": "10^-3 Å^3", "born_charges": "10^-3 e"}
    print(f"{len(graphs)} structures from {args.data}")
    print(f"{'quantity':<18}{'MAE':>12}{'RMSE':>12}  unit")
    for name, unit in units.items():
        if f"{name}_mae" in metrics:
            print(f"{name:<18}{metrics[name + '_mae'] * 1e3:>12.3f}{metrics[name + '_rmse'] * 1e3:>12.3f}  {unit}")
    return 0


if __name__ == "__main__":
    sys.exit(train_main())
