"""Mean and spread over seeds of several ``bench_3bpa`` runs, with ratios to mace-torch.

Each input is a JSON file written by ``python -m benchmarks.bench_3bpa --output``. Rows are grouped by
model, by the extra tace-aiida model settings (``--tace-model``) and by the training settings that differ
from the matched defaults (the scheduler's patience, clipping, weight decay, stage two), so A/B runs appear as
columns of their own:

    python -m benchmarks.bench_3bpa_seeds benchmarks/results/bench_3bpa_2026-12-03_*.json

Only the accuracy rows are summarised: the timings of runs made side by side are not comparable.
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict
from pathlib import Path

import numpy as np

from benchmarks.common import REFERENCE_MODEL, MatchedSettings

#: The metrics summarised: the test errors (the rows' labels as ``bench_3bpa`` writes them).
ACCURACY_PREFIXES = ("E RMSE", "F RMSE")

#: The plateau patience each model trained with in runs written before ``bench_3bpa`` matched it
#: (their settings have no ``scheduler_patience``): each model's own default.
OWN_PATIENCE = {"tace-aiida": 5, "mace-torch": 50}
#: The gradient clipping and weight decay of runs written before they were matched: each model's own.
OWN_CLIP_GRAD_NORM = {"tace-aiida": None, "mace-torch": 10.0}
OWN_WEIGHT_DECAY = {"tace-aiida": 0.0, "mace-torch": 5e-7}
#: Whether runs written before they were matched kept the Bessel frequencies fixed (mace-torch always does).
OWN_FIXED_BESSEL = {"tace-aiida": False, "mace-torch": True}


def column_name(model: str, tace_model: dict, settings: dict) -> str:
    """``model`` with what its run changed from the matched settings, e.g.
    ``tace-aiida {"message_normalization": "mean"}, patience 5, no clipping``."""
    fixed_bessel = settings.get("fixed_bessel_frequencies", OWN_FIXED_BESSEL[model])
    if "bessel_trainable" in tace_model:  # runs that set it as a model option before it was matched
        fixed_bessel = not tace_model["bessel_trainable"]
        tace_model = {key: value for key, value in tace_model.items() if key != "bessel_trainable"}
    name = f"{model} {json.dumps(tace_model, sort_keys=True)}" if model == "tace-aiida" and tace_model else model
    patience = settings.get("scheduler_patience", OWN_PATIENCE[model])
    changed = [f"patience {patience}"] if patience != MatchedSettings.scheduler_patience else []
    clip = settings.get("clip_grad_norm", OWN_CLIP_GRAD_NORM[model])
    if clip != MatchedSettings.clip_grad_norm:
        changed.append("no clipping" if clip is None else f"clip {clip:g}")
    weight_decay = settings.get("weight_decay", OWN_WEIGHT_DECAY[model])
    if weight_decay != MatchedSettings.weight_decay:
        changed.append(f"weight decay {weight_decay:g}")
    if fixed_bessel != MatchedSettings.fixed_bessel_frequencies:
        changed.append("trained Bessel frequencies" if not fixed_bessel else "fixed Bessel frequencies")
    if settings.get("hidden_rank", MatchedSettings.hidden_rank) != MatchedSettings.hidden_rank:
        changed.append(f"hidden rank {settings['hidden_rank']}")
    if settings.get("dtype", MatchedSettings.dtype) != MatchedSettings.dtype:
        changed.append(settings["dtype"])
    if settings.get("stage_two_start") is not None:
        changed.append(f"stage two from {settings['stage_two_start']}")
    return ", ".join([name, *changed])


def collect(paths: list[Path]) -> dict[str, dict[str, dict[int, float]]]:
    """column -> metric -> seed -> value, from the ``bench_3bpa`` output files ``paths``."""
    found: dict[str, dict[str, dict[int, float]]] = defaultdict(lambda: defaultdict(dict))
    results = {path: json.loads(path.read_text()) for path in paths}
    first_dataset = results[paths[0]].get("dataset")  # None: 3BPA
    for path, result in results.items():
        if result.get("dataset") != first_dataset:
            raise ValueError(f"{path} ran on {result.get('dataset') or '3BPA'}, {paths[0]} on {first_dataset or '3BPA'}")
        seed = int(result["settings"]["seed"])
        for model, row in result["rows"].items():
            column = column_name(model, result.get("tace_model", {}), result["settings"])
            for metric, value in row.items():
                if metric.startswith(ACCURACY_PREFIXES):
                    if seed in found[column][metric]:
                        raise ValueError(f"{path}: a second {column!r} run with seed {seed}")
                    found[column][metric][seed] = float(value)
    return found


def seed_table(found: dict[str, dict[str, dict[int, float]]], reference: str = REFERENCE_MODEL) -> str:
    """Markdown table: mean ± standard deviation over seeds per column, and each column's mean over the
    reference's mean (the seeds each column ran are listed in the header)."""
    columns = list(found)
    compared = [c for c in columns if c != reference] if reference in found else []
    metrics = list(dict.fromkeys(m for column in found.values() for m in column))
    seeds = {c: sorted({s for values in found[c].values() for s in values}) for c in columns}
    header = ["metric", *(f"{c} (seeds {', '.join(map(str, seeds[c]))})" for c in columns),
              *(f"{c} / {reference}" for c in compared)]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for metric in metrics:
        means = {c: np.mean(list(found[c][metric].values())) for c in columns if found[c].get(metric)}
        cells = [f"{means[c]:.1f} ± {np.std(list(found[c][metric].values())):.1f}" if c in means else "–" for c in columns]
        cells += [f"{means[c] / means[reference]:.2f}×" if c in means and reference in means else "–" for c in compared]
        lines.append("| " + " | ".join([metric, *cells]) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("files", nargs="+", type=Path, help="bench_3bpa output files (JSON)")
    parser.add_argument("--reference", default=REFERENCE_MODEL,
                        help="the column every other is divided by, e.g. 'mace-torch, stage two from 22'")
    args = parser.parse_args()
    print(seed_table(collect(args.files), args.reference))


if __name__ == "__main__":
    main()
