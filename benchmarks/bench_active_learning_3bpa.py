"""Pool-based active learning on 3BPA: the loop's uncertainty selection against random selection.

Both strategies start from the same ``--initial`` frames of ``train_300K`` and grow their training
set by ``--step`` labels per round, taken from one pool of unlabelled frames: the rest of
``train_300K`` plus a random ``--pool-mixed-fraction`` of the ``train_mixedT`` frames that are not in
``train_300K`` (300, 600 and 1200 K MD). The remaining mixed-temperature frames are the test set.
Labels come from :class:`LookupLabeller`, which reads the stored DFT labels of the frames asked for.

* ``random``: picks uniformly among the unlabelled pool frames.
* ``active``: trains an ensemble of ``--members`` potentials, computes every unlabelled pool frame's
  model deviation (max over atoms of the ensemble's force standard deviation, eV/Å) and picks with
  the loop's own selection (:mod:`tace_aiida.selection`): the trust window's lower bound is set at the
  deviation of the ``--candidates × --step``-th most uncertain frame, and k-means on the invariant
  descriptors of those candidates takes the most uncertain frame of each cluster.
* ``active_fps``, ``active_lcmd``, ``active_maxdet``: the same, with the selection's other batch choices
  (``diversity`` fps, lcmd, maxdet) in place of k-means.
* ``active_features``: as ``active``, but with one potential whose deviation is its own expected force
  error from its features (``uncertainty`` ``features``), so it trains a third of the models.
* ``oracle``: as ``active_features``, but the deviation is the potential's true largest force error on
  the frame (eV/Å, from the stored labels): not a strategy a user can run, but the best any
  uncertainty could do with this selection, so it bounds what better uncertainties can gain.
* ``random_test_like``: picks uniformly among the unlabelled pool frames drawn from the test set's
  distribution (the ``train_mixedT`` ones; 3BPA split only): not a strategy a user can run either (it
  knows where each frame came from), but it tells what finding the test-like frames is worth by itself.

Both are scored the same way: the test force RMSE (meV/Å) of the first member (seed 1), trained
from scratch (or, with ``--warm-start``, from its weights of the round before) on the labels of that
round with identical settings; ``active`` also reports its
ensemble mean. The table ends with the number of labels ``active`` needed to reach ``random``'s
final error, then, per active strategy (``oracle`` aside) and round, how calibrated its uncertainty was:
as the loop's report does, a scale is fitted on each round's picks once they are labelled and used for the
next round's deviations; each round reports the Spearman rank correlation of predicted max force deviation
and actual max force error on the test frames and on the picks, the fitted scale, the scale the test frames
would give, and the test frames' miscalibration area unscaled and with the scale in use. Each strategy's rows are written to ``--output`` as soon as it finishes; a later run
with the same settings and ``--strategies active`` (say) keeps the other strategy's rows.

    python -m benchmarks.bench_active_learning_3bpa            # full run (about an hour on 2 cores)
    python -m benchmarks.bench_active_learning_3bpa --quick    # a few minutes: checks the script works
    python -m benchmarks.bench_active_learning_3bpa --summarise seed1.json seed2.json seed3.json

Any dataset in the same layout runs without editing the code: ``--pool-files``, ``--test-files`` and
``--isolated-atoms-file`` (labelled extxyz, eV and eV/Å), and ``--initial-file`` or ``--initial`` random
pool frames, replace the 3BPA split.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch
from ase import Atoms
from ase.io import read, write
from tace_aiida.model.calculator import TACECalculator
from tace_aiida.model.training import read_training_files, train

from benchmarks.common import DATA_DIR, MatchedSettings, energy_force_rmse, frame_key, read_e0s
from benchmarks.tace_peer import tace_config
from tace_aiida.calibration import calibration_summary
from tace_aiida.selection import CANDIDATE, SelectionSettings, TrustWindow, classify, frame_deviation, pick_diverse

#: Smaller than the side-by-side benchmark's model so that a whole run fits in about an hour; trained
#: with tace-aiida's own defaults (patience 5, no clipping, no weight decay, trained Bessel frequencies),
#: as the loop trains.
SETTINGS = MatchedSettings(channels=16, max_edge_rank=2, radial_mlp=(32, 32), epochs=60, scheduler_patience=5,
                           clip_grad_norm=None, weight_decay=0.0, fixed_bessel_frequencies=False)


@dataclass(frozen=True)
class Strategy:
    """The selection's ``diversity`` (None: uniformly random, among the test-like pool frames only with
    ``test_like``) and where its uncertainty comes from: the calculator's ``uncertainty`` (``ensemble``,
    ``features``) or, for ``oracle``, the true force error."""

    diversity: str | None
    uncertainty: str = "ensemble"
    test_like: bool = False


STRATEGIES = {"random": Strategy(None), "active": Strategy("kmeans"), "active_fps": Strategy("fps"),
              "active_lcmd": Strategy("lcmd"), "active_maxdet": Strategy("maxdet"),
              "active_features": Strategy("kmeans", "features"), "oracle": Strategy("kmeans", "oracle"),
              "random_test_like": Strategy(None, test_like=True)}


@dataclass
class PoolSplit:
    """Labelled start, unlabelled pool (labels kept apart in the labeller) and test frames; ``test_like`` tells,
    per pool frame, whether it was drawn from the test set's distribution (None where that is not known)."""

    initial: list[Atoms]
    pool: list[Atoms]
    test: list[Atoms]
    e0s: dict[int, float]
    test_like: list[bool] | None = None


class LookupLabeller:
    """Hands out the stored DFT labels (eV, eV/Å) of pool frames and counts how many it gave."""

    def __init__(self, labelled_pool: list[Atoms]) -> None:
        self._frames = labelled_pool
        self.calls = 0

    def label(self, indices: list[int]) -> list[Atoms]:
        self.calls += len(indices)
        return [self._frames[i] for i in indices]


def unlabelled(atoms: Atoms) -> Atoms:
    """A copy of ``atoms`` with species, positions and cell only: what a strategy may look at."""
    return Atoms(numbers=atoms.numbers, positions=atoms.positions, cell=atoms.cell, pbc=atoms.pbc)


def pool_split(initial_size: int, pool_mixed_fraction: float, seed: int, data_dir: Path = DATA_DIR) -> PoolSplit:
    """The start, pool and test frames described in the module docstring (deterministic for ``seed``)."""
    rng = np.random.default_rng(seed)
    frames_300 = read(data_dir / "train_300K.xyz", ":")
    seen = {frame_key(a) for a in frames_300}
    mixed_only = [a for a in read(data_dir / "train_mixedT.xyz", ":") if frame_key(a) not in seen]
    order_300 = rng.permutation(len(frames_300))
    order_mixed = rng.permutation(len(mixed_only))
    n_pool_mixed = round(pool_mixed_fraction * len(mixed_only))
    return PoolSplit(
        initial=[frames_300[i] for i in order_300[:initial_size]],
        pool=[frames_300[i] for i in order_300[initial_size:]] + [mixed_only[i] for i in order_mixed[:n_pool_mixed]],
        test=[mixed_only[i] for i in order_mixed[n_pool_mixed:]],
        e0s=read_e0s(data_dir / "iso_atoms.xyz"),
        test_like=[False] * (len(frames_300) - initial_size) + [True] * n_pool_mixed,
    )


def split_from_files(pools: list[str], tests: list[str], isolated_atoms: str, initial: str | None,
                     initial_size: int, seed: int) -> PoolSplit:
    """A split of any dataset in 3BPA's layout: labelled extxyz files (eV, eV/Å) for the pool and the test, one
    frame per element of the isolated atoms for the E0s, and the starting frames from ``initial``, else
    ``initial_size`` random frames of the pool (taken out of it; deterministic for ``seed``)."""
    pool, e0s = read_training_files(pools), read_e0s(Path(isolated_atoms))
    if initial is not None:
        return PoolSplit(initial=read_training_files([initial]), pool=pool, test=read_training_files(tests), e0s=e0s)
    order = np.random.default_rng(seed).permutation(len(pool))
    return PoolSplit(initial=[pool[i] for i in order[:initial_size]], pool=[pool[i] for i in order[initial_size:]],
                     test=read_training_files(tests), e0s=e0s)


def train_ensemble(frames: list[Atoms], members: int, settings: MatchedSettings, workdir: Path,
                   e0s: dict[int, float], start_from: list[Path] | None = None) -> list[Path]:
    """Checkpoints of ``members`` potentials trained on ``frames`` (E0s ``e0s``, eV) with seeds 1, 2, ...

    Each member holds out its own random 10 % of ``frames`` for validation, as in the loop. With
    ``start_from`` (a checkpoint per member) each member starts from its own earlier weights, as the
    loop's warm start does; otherwise from random weights.
    """
    workdir.mkdir(parents=True, exist_ok=True)
    write(workdir / "train.xyz", frames, format="extxyz")
    checkpoints = []
    for seed in range(1, members + 1):
        init = str(start_from[seed - 1]) if start_from else None
        config = replace(tace_config(settings, workdir / f"member_{seed}", e0s), train_file=str(workdir / "train.xyz"),
                         valid_file=None, valid_fraction=settings.valid_fraction, seed=seed, init_checkpoint=init)
        checkpoints.append(Path(train(config)["checkpoint"]))
    return checkpoints


@dataclass
class Predictions:
    """A calculator's mean forces ``[n_frames, n_atoms, 3]``, per-atom deviations ``[n_frames, n_atoms]`` (eV/Å)
    and descriptors ``[n_frames, ...]`` of some frames."""

    forces: np.ndarray
    forces_std: np.ndarray
    descriptors: np.ndarray


def predict(calc: TACECalculator, frames: list[Atoms]) -> Predictions:
    """:class:`Predictions` of ``calc`` (an ensemble, or one model with feature uncertainty) for ``frames``."""
    forces, forces_std, descriptors = [], [], []
    for atoms in frames:
        atoms = atoms.copy()
        atoms.calc = calc
        forces.append(atoms.get_forces())
        forces_std.append(calc.results["forces_std"])
        descriptors.append(calc.results["descriptors"])
    return Predictions(np.stack(forces), np.stack(forces_std), np.array(descriptors))


def most_informative(predictions: Predictions, count: int, candidates: int, seed: int, diversity: str = "kmeans",
                     true_forces: list[np.ndarray] | None = None) -> tuple[list[int], np.ndarray]:
    """Positions among the predicted frames that the loop's selection would label, and every frame's deviation (eV/Å).

    The trust window opens at the deviation of the ``candidates``-th most uncertain frame (none is
    unphysical: every pool frame has a DFT label); ``count`` of those are picked by ``diversity``.
    With ``true_forces`` (``[n_atoms, 3]`` eV/Å per frame) a frame's deviation is its largest atomic
    force error instead of the calculator's uncertainty.
    """
    forces_std = (predictions.forces_std if true_forces is None
                  else np.linalg.norm(predictions.forces - np.stack(true_forces), axis=-1))
    deviation = frame_deviation(predictions.forces, forces_std, TrustWindow(0.0, np.inf))
    window = TrustWindow(trust_low=float(np.sort(deviation)[::-1][min(candidates, len(deviation)) - 1]), trust_high=np.inf)
    candidate = np.flatnonzero(classify(deviation, window) == CANDIDATE)
    settings = SelectionSettings(window=window, max_selected=count, diversity=diversity, seed=seed)
    picks = pick_diverse(predictions.descriptors[candidate], deviation[candidate], settings)
    return [int(candidate[i]) for i in picks], deviation


def calibration_figures(predictions: Predictions, labelled: list[Atoms], scale_used: float) -> dict:
    """The loop's calibration report (:func:`tace_aiida.calibration.calibration_summary`) for predicted frames
    whose labels are ``labelled``, without the per-frame lists: Spearman rank correlation of the predicted max
    force deviation and the actual max force error over the frames, the scale fitted on their per-atom errors,
    and the miscalibration area unscaled and with ``scale_used``."""
    errors = [atoms.get_forces() - forces for atoms, forces in zip(labelled, predictions.forces, strict=True)]
    summary = calibration_summary(predictions.forces_std.max(axis=-1).tolist(), errors, list(predictions.forces_std),
                                  scale_used)
    return {key: summary[key] for key in ("spearman", "scale", "scale_used", "miscalibration_area",
                                          "miscalibration_area_used")}


def run_strategy(strategy: str, split: PoolSplit, args: argparse.Namespace, settings: MatchedSettings,
                 scratch: Path) -> list[dict]:
    """One row per round: labels used, test errors (meV, meV/Å), the pool positions it picked (``picked``, indices
    into ``split.pool``) and, for the active ones, the picked deviations."""
    labeller = LookupLabeller(split.pool)
    pool_view = [unlabelled(a) for a in split.pool]
    remaining = list(range(len(split.pool)))
    training = list(split.initial)
    rng = np.random.default_rng(args.seed)
    rows, checkpoints = [], None
    scale_used = 1.0  # as in the loop: each round's deviations are scaled by the scale fitted on the last picks
    for round_index in range(args.rounds + 1):
        start = time.perf_counter()
        choice = STRATEGIES[strategy]
        active = choice.diversity is not None
        members = args.members if active and choice.uncertainty == "ensemble" else 1
        checkpoints = train_ensemble(training, members, settings, scratch / f"{strategy}_{round_index}", split.e0s,
                                     checkpoints if args.warm_start else None)
        first = energy_force_rmse(TACECalculator(checkpoints[0], device="cpu"), split.test)
        row = {"labels": len(training), "forces_rmse": first["forces_rmse_meV_per_A"],
               "energy_rmse_per_atom": first["energy_rmse_meV_per_atom"]}
        if active:
            ensemble = TACECalculator(checkpoints, device="cpu",
                                      uncertainty="ensemble" if choice.uncertainty == "oracle" else choice.uncertainty)
            if members > 1:
                row["ensemble_forces_rmse"] = energy_force_rmse(ensemble, split.test)["forces_rmse_meV_per_A"]
            if choice.uncertainty != "oracle":
                row["calibration_test"] = calibration_figures(predict(ensemble, split.test), split.test, scale_used)
        if round_index < args.rounds:
            if active:
                pool_predictions = predict(ensemble, [pool_view[i] for i in remaining])
                true_forces = ([split.pool[i].get_forces() for i in remaining] if choice.uncertainty == "oracle"
                               else None)
                picks, deviation = most_informative(pool_predictions, args.step, args.candidates * args.step,
                                                    args.seed, choice.diversity, true_forces)
                row["picked_deviation_mean"] = float(deviation[picks].mean())
                row["pool_deviation_mean"] = float(deviation.mean())
            elif choice.test_like:
                if split.test_like is None:
                    raise ValueError(f"{strategy} needs to know which pool frames are test-like: 3BPA split only")
                test_like = [i for i, index in enumerate(remaining) if split.test_like[index]]
                picks = rng.choice(test_like, size=args.step, replace=False).tolist()
            else:
                picks = rng.choice(len(remaining), size=args.step, replace=False).tolist()
            chosen = [remaining[i] for i in picks]
            row["picked"] = chosen
            new_labels = labeller.label(chosen)
            training += new_labels
            if active and choice.uncertainty != "oracle":
                picked = Predictions(pool_predictions.forces[picks], pool_predictions.forces_std[picks],
                                     pool_predictions.descriptors[picks])
                row["calibration_picked"] = calibration_figures(picked, new_labels, scale_used)
                scale_used = row["calibration_picked"]["scale"] or scale_used
            taken = set(chosen)
            remaining = [i for i in remaining if i not in taken]
        row["seconds"] = time.perf_counter() - start
        rows.append(row)
        print(f"{strategy:>6} labels {row['labels']:4d}  test F RMSE {row['forces_rmse']:6.1f} meV/Å  "
              f"({row['seconds']:.0f} s)", flush=True)
    assert labeller.calls == len(training) - len(split.initial)
    return rows


def labels_to_reach(rows: list[dict], target: float) -> int | None:
    """Fewest labels at which a round's test force RMSE is at or below ``target`` (meV/Å)."""
    return next((row["labels"] for row in rows if row["forces_rmse"] <= target), None)


def format_table(rows: dict[str, list[dict]]) -> str:
    """Markdown table of test force RMSE (meV/Å) against labels for each strategy in ``rows`` (random first),
    then how many labels each active strategy took to reach random selection's final error."""
    active = [name for name in STRATEGIES if name in rows and name != "random"]
    lines = ["| labels | random | " + " | ".join(f"{name} (/ random)" for name in active) + " |",
             "|---|---|" + "---|" * len(active)]
    for index, baseline in enumerate(rows["random"]):
        cells = [f"{rows[name][index]['forces_rmse']:.1f} ({rows[name][index]['forces_rmse'] / baseline['forces_rmse']:.2f})"
                 for name in active]
        lines.append(f"| {baseline['labels']} | {baseline['forces_rmse']:.1f} | " + " | ".join(cells) + " |")
    final = rows["random"][-1]
    lines.append(f"\nlabels to reach random selection's final error ({final['forces_rmse']:.1f} meV/Å, "
                 f"{final['labels']} labels):")
    for name in active:
        needed = labels_to_reach(rows[name], final["forces_rmse"])
        lines.append(f"- {name}: " + (f"{needed} ({needed / final['labels']:.2f} of random's)" if needed is not None
                                      else "not within this run"))
    return "\n".join(lines)


#: (row entry, key) of the columns of :func:`format_calibration`.
CALIBRATION_COLUMNS = (("calibration_test", "spearman"), ("calibration_picked", "spearman"),
                       ("calibration_picked", "scale"), ("calibration_test", "scale"),
                       ("calibration_test", "miscalibration_area"), ("calibration_test", "miscalibration_area_used"))


def mean_over_runs(rows: list[dict], entry: str, key: str) -> str:
    """``rows[i][entry][key]`` averaged over the rows that have it, to 2 decimals, else "-"."""
    values = [row.get(entry, {}).get(key) for row in rows]
    values = [value for value in values if value is not None]
    return f"{np.mean(values):.2f}" if values else "-"


def format_calibration(runs: list[dict[str, list[dict]]]) -> str:
    """Markdown table, per active strategy and round, of how its uncertainty was calibrated, as the mean over
    ``runs`` (several seeds): on the test frames, the Spearman rank correlation of predicted max force deviation
    and actual max force error, and the miscalibration area unscaled and with the scale in use (fitted on the
    previous round's picks, as the loop does); the scale fitted on this round's picks and the scale the test
    frames themselves would give (the ideal one)."""
    names = [name for name in STRATEGIES if all("calibration_test" in (rows.get(name) or [{}])[0] for rows in runs)]
    lines = []
    for name in names:
        lines += [f"\n{name}: calibration of its uncertainty (mean over {len(runs)} run(s))",
                  "| labels | Spearman, test | Spearman, picks | scale fitted on picks | scale of the test frames "
                  "| area, test, unscaled | area, test, scale in use |", "|---|---|---|---|---|---|---|"]
        for index, row in enumerate(runs[0][name]):
            cells = [mean_over_runs([rows[name][index] for rows in runs], entry, key) for entry, key in CALIBRATION_COLUMNS]
            lines.append(f"| {row['labels']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def summarise_seeds(runs: list[dict[str, list[dict]]]) -> str:
    """Markdown table of the mean ± spread (over runs of several seeds) of the test force RMSE (meV/Å) per
    strategy and label count, then each active strategy's labels to reach random's final error, per seed."""
    names = [name for name in STRATEGIES if all(name in rows for rows in runs)]
    lines = ["| labels | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
    for index, row in enumerate(runs[0]["random"]):
        cells = []
        for name in names:
            values = np.array([rows[name][index]["forces_rmse"] for rows in runs])
            ratio = np.mean([rows[name][index]["forces_rmse"] / rows["random"][index]["forces_rmse"] for rows in runs])
            cells.append(f"{values.mean():.1f} ± {values.std():.1f}" + (f" ({ratio:.2f})" if name != "random" else ""))
        lines.append(f"| {row['labels']} | " + " | ".join(cells) + " |")
    lines.append("\nlabels to reach random selection's final error, per seed (fraction of random's labels):")
    for name in names[1:]:
        reached = []
        for rows in runs:
            final = rows["random"][-1]
            needed = labels_to_reach(rows[name], final["forces_rmse"])
            reached.append(f"{needed / final['labels']:.2f}" if needed is not None else "not reached")
        lines.append(f"- {name}: " + ", ".join(reached))
    return "\n".join(lines)


def previous_rows(path: Path, configuration: dict) -> dict[str, list[dict]]:
    """Rows of an earlier run written to ``path`` with the same settings and arguments, else none (and says which
    setting differed)."""
    if not path.exists():
        return {}
    earlier = json.loads(path.read_text())
    now = json.loads(json.dumps(configuration))
    differ = {f"{part}.{key}": (earlier.get(part, {}).get(key), now[part].get(key))
              for part in now for key in earlier.get(part, {}).keys() | now[part].keys()
              if earlier.get(part, {}).get(key) != now[part].get(key)}
    if differ:
        print(f"not keeping the rows of {path}: (earlier, now) {differ}", flush=True)
        return {}
    return earlier["rows"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--initial", type=int, default=50, help="labelled train_300K frames to start from")
    parser.add_argument("--step", type=int, default=25, help="labels added per round")
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--members", type=int, default=3, help="ensemble size of the active strategy")
    parser.add_argument("--candidates", type=int, default=4,
                        help="the candidates are the CANDIDATES x STEP most uncertain pool frames")
    parser.add_argument("--strategies", nargs="+", choices=STRATEGIES, default=list(STRATEGIES))
    parser.add_argument("--pool-mixed-fraction", type=float, default=0.5)
    parser.add_argument("--epochs", type=int, default=SETTINGS.epochs)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--pool-files", nargs="+", help="another dataset: labelled extxyz files of the pool "
                        "(with --test-files and --isolated-atoms-file; --pool-mixed-fraction then does not apply)")
    parser.add_argument("--test-files", nargs="+", help="labelled extxyz files of the test set")
    parser.add_argument("--isolated-atoms-file", help="extxyz of one isolated atom per element (E0s, eV)")
    parser.add_argument("--initial-file", help="labelled extxyz of the starting frames; without it, --initial "
                        "random frames of the pool")
    parser.add_argument("--warm-start", action="store_true", default=None,
                        help="each round's members start from the previous round's, as in the loop (scored the same way)")
    parser.add_argument("--quick", action="store_true", help="tiny run that only checks the script works")
    parser.add_argument("--output", type=Path, default=Path("bench_active_learning_3bpa.json"))
    parser.add_argument("--summarise", nargs="+", type=Path, metavar="OUTPUT",
                        help="print the mean over the --output files of several seeds and stop")
    args = parser.parse_args()
    if args.summarise:
        runs = [json.loads(path.read_text())["rows"] for path in args.summarise]
        print(summarise_seeds(runs) + "\n" + format_calibration(runs))
        return

    settings = replace(SETTINGS, epochs=args.epochs)
    files = (args.pool_files, args.test_files, args.isolated_atoms_file)
    if (any(files) or args.initial_file) and not all(files):
        parser.error("--pool-files, --test-files and --isolated-atoms-file go together (and --initial-file with them)")
    split = (split_from_files(*files, args.initial_file, args.initial, args.seed) if all(files)
             else pool_split(args.initial, args.pool_mixed_fraction, args.seed))
    if args.quick:
        settings = replace(settings, epochs=2, channels=8)
        args.initial, args.step, args.rounds, args.members = 10, 5, 1, 2
        split = PoolSplit(initial=split.initial[:10], pool=split.pool[-40:], test=split.test[:20], e0s=split.e0s,
                          test_like=split.test_like and split.test_like[-40:])
    print(f"start {len(split.initial)}, pool {len(split.pool)}, test {len(split.test)} frames; "
          f"{args.rounds} rounds of {args.step} labels; {torch.get_num_threads()} threads", flush=True)
    configuration = {"settings": asdict(settings), "arguments": {k: v for k, v in vars(args).items()
                                                                 if k not in ("output", "strategies") and v is not None}}
    rows = previous_rows(args.output, configuration)
    with tempfile.TemporaryDirectory(prefix="bench_al_3bpa_") as scratch:
        for strategy in args.strategies:
            rows[strategy] = run_strategy(strategy, split, args, settings, Path(scratch))
            args.output.write_text(json.dumps({**configuration, "rows": rows}, indent=1))
    if "random" in rows and len(rows) > 1:
        table = format_table(rows) + "\n" + format_calibration([rows])
        print("\n" + table)
        args.output.write_text(json.dumps({**configuration, "rows": rows, "table": table}, indent=1))


if __name__ == "__main__":
    main()
