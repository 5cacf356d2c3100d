"""Exploration variants against plain MD in the loop: do their labels make a better potential?

Runs the main job (``examples/active_learning_cu_emt.py``: the example's six Cu cells, EMT labels, the
``fast`` protocol) with its three exploration stages (300, 600, 900 K) replaced by one stage per
``--temperatures`` entry, each biased by ``--bias-strength`` (eV, 0: plain MD) and ``--bias-width`` (eV
per sqrt(atom)) and integrating the members' mean forces or, with ``--driven-by first_member``, the first
member's (the ensemble evaluated at the saved frames only), and writes the final ensemble to ``--output``.
``--temperatures 300 600 900`` with the other options at their defaults explores as the main job does. The
loop stops as the example does (90 % of the last stage's frames within the trust window, at most 8
iterations). Score the ensembles against EMT at 300-1200 K with ``python -m benchmarks.bench_main_job_ensemble
<output> ...``.

    AIIDA_PATH=runs/biased/aiida tace-aiida setup
    AIIDA_PATH=runs/biased/aiida python -m benchmarks.bench_biased_exploration_cu \
        --temperatures 300 --bias-strength 5 --bias-width 0.036 --output runs/biased/al_cu_emt  # ~12 min per iteration
"""

from __future__ import annotations

import argparse
import runpy
from pathlib import Path

from aiida import load_profile, orm

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "active_learning_cu_emt.py"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--temperatures", type=float, nargs="+", default=[300.0], help="one stage per temperature (K)")
    parser.add_argument("--steps", type=int, default=200, help="MD steps per run (2 fs each, as the fast protocol)")
    parser.add_argument("--bias-strength", type=float, default=0.0, help="eV; 0 explores with plain MD")
    parser.add_argument("--bias-width", type=float, default=0.05, help="eV per sqrt(atom)")
    parser.add_argument("--driven-by", choices=["mean", "first_member"], default="mean",
                        help="what the MD integrates: the members' mean forces, or the first member's")
    parser.add_argument("--output", type=Path, required=True, help="folder for the final ensemble and the plots")
    args = parser.parse_args()

    load_profile()
    from tace_aiida.workflows.active_learning import ActiveLearningWorkChain

    from tace_aiida.dask_cluster import ensure_local_cluster
    from tace_aiida.profile import DASK_COMPUTER, LOCAL_COMPUTER
    from tace_aiida.run_summary import run_or_submit

    copper_supercells = runpy.run_path(str(EXAMPLE), run_name="example")["copper_supercells"]
    ensure_local_cluster()
    codes = {"train": orm.load_code(f"tace-train@{DASK_COMPUTER}"), "md": orm.load_code(f"tace-md@{DASK_COMPUTER}"),
             "label": orm.load_code(f"tace-label@{LOCAL_COMPUTER}")}
    stages = [
        {"name": f"{temperature:g} K", "temperatures": [temperature], "steps": args.steps, "timestep": 2.0,
         "save_interval": 10, "max_starts": 3, "bias_strength": args.bias_strength, "bias_width": args.bias_width,
         "driven_by": args.driven_by}
        for temperature in args.temperatures
    ]
    builder = ActiveLearningWorkChain.get_builder_from_protocol(
        codes, copper_supercells(), protocol="fast", calculator="ase.calculators.emt.EMT",
        overrides={"exploration": stages})
    bias = f", bias {args.bias_strength:g} eV / {args.bias_width:g} eV per sqrt(atom)" if args.bias_strength else ""
    driver = ", driven by the first member" if args.driven_by == "first_member" else ""
    builder.metadata.label = f"Cu EMT, stages {' '.join(f'{t:g}' for t in args.temperatures)} K{bias}{driver}"
    run_or_submit(builder, args.output, [])


if __name__ == "__main__":
    main()
