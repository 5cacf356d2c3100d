"""Generating and labelling a training set on the daemon: throughput with one and two dask workers.

One ``tace.generate_dataset`` run per worker count, submitted to the daemon (2 workers) of a fresh embedded
profile (SQLite and ZeroMQ, made by ``tace-aiida setup`` in a temporary ``AIIDA_PATH``), its labelling jobs
run by a local dask cluster of that many workers (``tace-aiida dask start --workers N``, stopped after the
run). The parents are 4-atom fcc Cu, Ni and CuNi (L1_0) cells; the chain is a 2x2x1 supercell (16 atoms),
5 volumetric strains and Gaussian rattles at 0.03 and 0.08 Å, as many copies as make ``--count`` variants
(all distinct, so none is dropped). The labeller is :class:`benchmarks.slow_emt.SlowEMT`: EMT after a sleep
of ``--delay`` s per structure, a stand-in for a DFT code's wall time. Each run has its own ``seed``, so no
run reuses the labels of another.

Figures per run: the report (made, dropped, labelled, failed, structures per minute), the wall time from
submission to the end of the workchain, the labeller-busy time (the union of the labelling jobs' running
intervals, from each job's dask state file) and the orchestration overhead per structure, (wall - busy) /
structures: the time in which no labeller ran.

    python -m benchmarks.bench_generation                         # ~2,000 structures, 1 s each: about 1 hour
    python -m benchmarks.bench_generation --count 40 --delay 0.2  # checks the script in a few minutes
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPOSITORY = Path(__file__).resolve().parents[1]
RESULTS = REPOSITORY / "benchmarks" / "results" / "generation.json"
PROFILE = "bench-generation"
DAEMON_WORKERS = 2
CODE = "tace-label@localhost-dask"
CALCULATOR = "benchmarks.slow_emt.SlowEMT"
STRAINS = [-0.03, -0.015, 0.0, 0.015, 0.03]
AMPLITUDES = [0.03, 0.08]
PARENTS = 3


def transformations(count: int) -> list[dict]:
    """The chain making at least ``count`` variants of the 3 parents (16-atom cells, strained, rattled)."""
    copies = max(1, math.ceil(count / (PARENTS * len(STRAINS) * len(AMPLITUDES))))
    return [
        {"type": "supercell", "matrix": [2, 2, 1]},
        {"type": "strain", "volumetric": STRAINS},
        {"type": "rattle", "amplitudes": AMPLITUDES, "copies": copies},
    ]


def parents() -> dict:
    """fcc Cu and Ni, and an L1_0 CuNi alloy, as 4-atom cubic cells (Å)."""
    from ase.build import bulk

    alloy = bulk("Cu", "fcc", a=3.565, cubic=True)
    alloy.numbers[[1, 2]] = 28
    return {"cu": bulk("Cu", "fcc", a=3.61, cubic=True), "ni": bulk("Ni", "fcc", a=3.52, cubic=True), "cuni": alloy}


# ------------------------------------------------------------ in the profile (a subprocess with AIIDA_PATH set)


def labelling_facts(node) -> dict:
    """The labelling jobs of a generation run: count, the union and the sum of their running intervals (s)."""
    from aiida import orm

    from tace_aiida.schedulers import busy_seconds, read_job_state

    jobs = [child for child in node.called_descendants
            if isinstance(child, orm.CalcJobNode) and child.process_type == "aiida.calculations:tace.label_ase"]
    states = [read_job_state(job.outputs.retrieved) for job in jobs if "retrieved" in job.outputs]
    intervals = [(float(state.started_at), float(state.finished_at)) for state in states
                 if state.started_at and state.finished_at]
    return {"jobs": len(jobs), "jobs_with_state": len(intervals),
            "labeller_busy_s": busy_seconds(states),
            "labeller_sum_s": sum(end - start for start, end in intervals),
            "first_job_start": min((start for start, _ in intervals), default=None),
            "last_job_end": max((end for _, end in intervals), default=None)}


def run_one(args: argparse.Namespace) -> dict:
    """Submit one generation run to the daemon, wait for it to end, and return its figures."""
    from aiida import load_profile, orm
    from aiida.engine import submit

    load_profile(PROFILE)
    from ase import Atoms

    from tace_aiida.generation.cli import build

    structures = {label: orm.StructureData(ase=Atoms(atoms)) for label, atoms in parents().items()}
    builder = build(structures, transformations(args.count), code=CODE, calculator=CALCULATOR,
                    parameters={"delay": args.delay}, seed=args.seed, structures_per_job=args.structures_per_job,
                    max_concurrent=args.max_concurrent)
    builder.metadata.label = f"bench_generation seed {args.seed}"
    submitted_at = time.time()
    node = submit(builder)
    while not node.is_terminated:
        time.sleep(1.0)
    ended_at = time.time()
    report = node.outputs.report.get_dict() if "report" in node.outputs else {}
    facts = labelling_facts(node)
    return {"pk": node.pk, "exit_status": node.exit_status, "seed": args.seed, "submitted_at": submitted_at,
            "wall_s": ended_at - submitted_at, "node_ctime_to_mtime_s": (node.mtime - node.ctime).total_seconds(),
            "made": report.get("made"), "kept": report.get("kept"), "dropped": report.get("dropped"),
            "reused": report.get("reused"), "labelled": report.get("labelled"),
            "failed": len(report.get("failed", [])), "failed_first": report.get("failed", [])[:3],
            "report_structures_per_minute": report.get("structures_per_minute"),
            "report_seconds": report.get("seconds"), **facts}


# ------------------------------------------------------------------------------------------- the orchestration


def command(environment: dict, *arguments: str, check: bool = True) -> subprocess.CompletedProcess:
    """Run a command in the benchmark's environment, its output shown."""
    print("$", " ".join(arguments), flush=True)
    result = subprocess.run(arguments, env=environment, text=True, capture_output=True)
    output = (result.stdout + result.stderr).strip()
    if output:
        print("  " + output.replace("\n", "\n  ")[-2000:], flush=True)
    if check and result.returncode:
        raise RuntimeError(f"{' '.join(arguments)} exited with {result.returncode}")
    return result


def measure(args: argparse.Namespace, aiida_path: Path) -> list[dict]:
    """Set up the profile, start the daemon, and one run per worker count; stop everything started."""
    environment = dict(os.environ, AIIDA_PATH=str(aiida_path),
                      PYTHONPATH=os.pathsep.join(filter(None, [str(REPOSITORY), os.environ.get("PYTHONPATH")])))
    command(environment, "tace-aiida", "setup", "--profile", PROFILE)
    runs = []
    try:
        command(environment, "verdi", "-p", PROFILE, "daemon", "start", str(DAEMON_WORKERS))
        for index, workers in enumerate(args.workers):
            command(environment, "tace-aiida", "dask", "start", "--workers", str(workers))
            try:
                driver = [sys.executable, "-m", "benchmarks.bench_generation", "--run-one",
                          "--seed", str(args.seed + index), "--count", str(args.count), "--delay", str(args.delay),
                          "--structures-per-job", str(args.structures_per_job),
                          "--max-concurrent", str(args.max_concurrent)]
                print(f"$ {' '.join(driver[1:])}   # {workers} dask worker(s)", flush=True)
                result = subprocess.run(driver, env=environment, cwd=REPOSITORY, text=True, stdout=subprocess.PIPE)
                if result.returncode:
                    raise RuntimeError(f"the run with {workers} worker(s) failed (exit {result.returncode})")
                run = json.loads(result.stdout.strip().splitlines()[-1])
                run["dask_workers"] = workers
                runs.append(run)
                print(json.dumps(run), flush=True)
            finally:
                command(environment, "tace-aiida", "dask", "stop", check=False)
    finally:
        command(environment, "verdi", "-p", PROFILE, "daemon", "stop", "--timeout", "60", check=False)
    return runs


def derived(run: dict) -> dict:
    """Structures per minute and overhead per structure of one run."""
    structures = run["labelled"] or 0
    return {"structures_per_min": 60.0 * structures / run["wall_s"] if run["wall_s"] else None,
            "overhead_ms_per_structure": 1000.0 * (run["wall_s"] - run["labeller_busy_s"]) / structures
            if structures else None}


def table(runs: list[dict]) -> str:
    lines = ["| dask workers | structures labelled (failed) | jobs | wall (s) | structures/min | labeller busy (s) "
             "| overhead per structure (ms) |", "|---|---|---|---|---|---|---|"]
    for run in runs:
        lines.append(f"| {run['dask_workers']} | {run['labelled']:,} ({run['failed']}) | {run['jobs']} | "
                     f"{run['wall_s']:.0f} | {run['structures_per_min']:.1f} | {run['labeller_busy_s']:.0f} | "
                     f"{run['overhead_ms_per_structure']:.0f} |")
    by_workers = {run["dask_workers"]: run for run in runs}
    if 1 in by_workers and 2 in by_workers:
        speedup = by_workers[2]["structures_per_min"] / by_workers[1]["structures_per_min"]
        lines.append(f"\nspeed-up with 2 workers: {speedup:.2f}x (structures per minute)")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2], help="dask worker counts, one run each")
    parser.add_argument("--count", type=int, default=2000, help="at least this many variants per run")
    parser.add_argument("--delay", type=float, default=1.0, help="seconds the labeller sleeps per structure")
    parser.add_argument("--structures-per-job", type=int, default=30)
    parser.add_argument("--max-concurrent", type=int, default=4, help="labelling jobs at a time")
    parser.add_argument("--seed", type=int, default=1, help="seed of the first run; the k-th run uses seed + k")
    parser.add_argument("--aiida-path", type=Path, help="AIIDA_PATH of the profile [default: a temporary folder]")
    parser.add_argument("--output", type=Path, default=RESULTS, help="the figures and the table (JSON)")
    parser.add_argument("--run-one", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.run_one:
        print(json.dumps(run_one(args)), flush=True)
        return
    started = time.time()
    if args.aiida_path:
        args.aiida_path.mkdir(parents=True, exist_ok=True)
        runs = measure(args, args.aiida_path)
    else:
        with tempfile.TemporaryDirectory(prefix="bench-generation-") as folder:
            runs = measure(args, Path(folder))
    for run in runs:
        run.update(derived(run))
    results = {"count": args.count, "delay_s": args.delay, "structures_per_job": args.structures_per_job,
               "max_concurrent": args.max_concurrent, "daemon_workers": DAEMON_WORKERS, "code": CODE,
               "calculator": CALCULATOR, "transformations": transformations(args.count), "cpus": os.cpu_count(),
               "load_average_at_end": os.getloadavg(), "total_s": time.time() - started, "runs": runs}
    results["table"] = table(runs)
    print(results["table"])
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
