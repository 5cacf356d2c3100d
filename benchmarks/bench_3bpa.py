"""3BPA side by side: tace-aiida's Cartesian-tensor potential against mace-torch, matched settings.

Trains both on ``train_300K`` (450 train / 50 validation frames) and tests on the ~470 frames of
``train_mixedT`` that are not in ``train_300K`` (300, 600 and 1200 K MD). Prints one Markdown table
with the ratios to mace-torch, and writes it with the raw figures to ``--output`` (JSON).

    python -m benchmarks.bench_3bpa                 # full run (about an hour on 2 cores)
    python -m benchmarks.bench_3bpa --quick         # 40 frames, 2 epochs: checks the script works
    python -m benchmarks.bench_3bpa --seed 2 --tace-model '{"message_normalization": "sqrt"}'

``--seed`` draws the validation split and the initial weights of both models; ``--tace-model`` adds
model settings (JSON) to tace-aiida's matched ones, for A/B runs of an option.

Any other molecular dataset in the same layout (labelled extxyz, eV and eV/Å) runs with the same settings:
``--train-file`` (``--train-frames N`` of its frames, the same draw for every seed, 10 % of them for
validation), ``--test-files`` (one table row per file) and ``--isolated-atoms-file`` (the E0s); the speed rows
then time the first test frame and a periodic cell of 8 training molecules.

    D=../shared/data/ethanol
    python -m benchmarks.bench_3bpa --train-file $D/train.xyz --train-frames 500 --test-files $D/test_MD.xyz \
        --isolated-atoms-file $D/isolated_atoms.xyz --seed 1 --output ethanol_seed1.json

Needs the ``benchmarks`` extra (``pip install -e .[benchmarks]``) and ``../shared/data/3bpa``.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from dataclasses import asdict, replace
from pathlib import Path

import torch

from benchmarks.common import (
    MatchedSettings,
    benchmark_metrics,
    format_table,
    load_3bpa_split,
    load_split_from_files,
    periodic_test_cell,
)
from benchmarks.mace_peer import train_mace
from benchmarks.tace_peer import train_tace

RUNNERS = {"tace-aiida": train_tace, "mace-torch": train_mace}


def float_or_none(text: str) -> float | None:
    """A float from the command line, or None for the text ``None``."""
    return None if text == "None" else float(text)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=MatchedSettings.epochs)
    parser.add_argument("--channels", type=int, default=MatchedSettings.channels)
    parser.add_argument("--hidden-rank", type=int, default=MatchedSettings.hidden_rank,
                        help="highest rank of both models' node features (mace-torch's max_L)")
    parser.add_argument("--dtype", choices=["float32", "float64"], default=MatchedSettings.dtype,
                        help="both models' training and evaluation precision")
    parser.add_argument("--time-budget", type=float, help="training wall-clock cap per model (s)")
    parser.add_argument("--scheduler-patience", type=int, default=MatchedSettings.scheduler_patience,
                        help="epochs without improvement before the learning rate falls by 0.8 (both models)")
    parser.add_argument("--stage-two-start", type=int, help="epoch at which both models switch to mace-torch's stage two")
    parser.add_argument("--clip-grad-norm", type=float_or_none, default=MatchedSettings.clip_grad_norm,
                        help="gradient norm at which both models clip a step, or None")
    parser.add_argument("--weight-decay", type=float, default=MatchedSettings.weight_decay,
                        help="both models' L2 penalty in Adam's update")
    parser.add_argument("--lr", type=float, default=MatchedSettings.lr, help="both models' initial learning rate")
    parser.add_argument("--quick", action="store_true", help="tiny run that only checks the script works")
    parser.add_argument("--models", nargs="+", choices=list(RUNNERS), default=list(RUNNERS))
    parser.add_argument("--seed", type=int, default=MatchedSettings.seed)
    parser.add_argument("--tace-model", type=json.loads, default={}, help="extra tace-aiida model settings, JSON")
    parser.add_argument("--train-file", type=Path, help="another dataset: labelled extxyz of the training frames")
    parser.add_argument("--train-frames", type=int, help="use this many frames of --train-file (a fixed draw)")
    parser.add_argument("--test-files", nargs="+", type=Path, help="labelled extxyz files of the test frames")
    parser.add_argument("--isolated-atoms-file", type=Path, help="extxyz of one isolated atom per element (E0s, eV)")
    parser.add_argument("--output", type=Path, default=Path("bench_3bpa.json"))
    args = parser.parse_args()
    dataset_files = (args.train_file, args.test_files, args.isolated_atoms_file)
    if any(dataset_files) and not all(dataset_files):
        parser.error("--train-file, --test-files and --isolated-atoms-file go together")
    if args.train_frames is not None and args.train_file is None:
        parser.error("--train-frames needs --train-file")

    torch.set_num_threads(torch.get_num_threads())
    settings = MatchedSettings(epochs=args.epochs, channels=args.channels, hidden_rank=args.hidden_rank, dtype=args.dtype,
                               time_budget_s=args.time_budget, seed=args.seed,
                               scheduler_patience=args.scheduler_patience, stage_two_start=args.stage_two_start,
                               clip_grad_norm=args.clip_grad_norm, weight_decay=args.weight_decay, lr=args.lr)
    if args.train_file is None:
        dataset = None
        train, valid, test, e0s = load_3bpa_split(seed=settings.seed, valid_fraction=settings.valid_fraction)
    else:
        dataset = {"train_file": str(args.train_file), "train_frames": args.train_frames,
                   "test_files": [str(path) for path in args.test_files],
                   "isolated_atoms_file": str(args.isolated_atoms_file)}
        train, valid, test, e0s = load_split_from_files(args.train_file, args.test_files, args.isolated_atoms_file,
                                                        settings.seed, settings.valid_fraction, args.train_frames)
    if args.quick:
        settings = replace(settings, epochs=2, channels=8)
        train, valid, test = train[:40], valid[:10], {t: frames[:10] for t, frames in test.items()}
    print("test frames per temperature:", {t: len(frames) for t, frames in test.items()}, flush=True)
    cell = periodic_test_cell() if dataset is None else periodic_test_cell(train)
    rows = {}
    with tempfile.TemporaryDirectory(prefix="bench_3bpa_") as scratch:
        for name in args.models:
            print(f"training {name} ...", flush=True)
            extra = {"model_options": args.tace_model} if name == "tace-aiida" else {}
            model = RUNNERS[name](train, valid, settings, Path(scratch) / name, e0s=e0s, **extra)
            rows[name] = benchmark_metrics(model, test, cell, repeats=2 if args.quick else 3, md_steps=20 if args.quick else 100)
            print(format_table({name: rows[name]}), flush=True)
    table = format_table(rows)
    print("\n" + table)
    args.output.write_text(json.dumps({"settings": asdict(settings), "tace_model": args.tace_model, "dataset": dataset,
                                       "rows": rows, "table": table}, indent=1))


if __name__ == "__main__":
    main()
