"""Generate a Cu/Ni/Cu-Ni training set labelled by EMT, then learn a potential from it, on the embedded set-up.

    tace-aiida setup                                          # once: profile, computers, codes
    verdi run examples/generate_then_learn_cu_ni_emt.py       # generation, then active learning

First ``tace.generate_dataset`` makes 32 variants of 16-atom fcc Cu and Ni cells (Cu, Cu3Ni and CuNi alloys
and Ni; each strained by ±2 %, each of those displaced at two amplitudes, twice) and labels them with ASE's
EMT, 8 per job; run again, it reuses every label. Then its ``dataset`` output is the initial ``dataset`` of
``tace.active_learning``, whose MD starts from frames spread over it. `--submit` hands both to the daemon.
"""

import sys
from pathlib import Path

from aiida import orm
from ase.build import bulk
from tace_aiida.workflows.active_learning import ActiveLearningWorkChain
from tace_aiida.workflows.generation import GenerateDatasetWorkChain

from tace_aiida.broker import ensure_broker
from tace_aiida.dask_cluster import ensure_local_cluster
from tace_aiida.generation.cli import follow, run_with_progress, summary_lines
from tace_aiida.profile import DASK_COMPUTER, LOCAL_COMPUTER
from tace_aiida.run_summary import run_or_submit

TRANSFORMATIONS = [
    {"type": "supercell", "matrix": [2, 2, 1]},
    {"type": "substitution", "replace": "Cu", "by": "Ni", "fractions": [0.25, 0.5], "keep_parents": True},
    {"type": "strain", "volumetric": [-0.02, 0.02]},
    {"type": "rattle", "amplitudes": [0.03, 0.08], "copies": 2},
]


def generation_builder():
    builder = GenerateDatasetWorkChain.get_builder()
    builder.structures = {"cu": orm.StructureData(ase=bulk("Cu", "fcc", a=3.61, cubic=True)),
                          "ni": orm.StructureData(ase=bulk("Ni", "fcc", a=3.52, cubic=True))}
    builder.transformations = orm.List(TRANSFORMATIONS)
    builder.seed = orm.Int(7)
    builder.label_ase.code = orm.load_code(f"tace-label@{LOCAL_COMPUTER}")
    builder.label_ase.calculator = orm.Str("ase.calculators.emt.EMT")
    builder.label_ase.structures_per_job = orm.Int(8)
    builder.label_ase.max_concurrent = orm.Int(2)
    builder.metadata.label = "Cu-Ni EMT training set"
    return builder


def learning_builder(dataset):
    builder = ActiveLearningWorkChain.get_builder()
    builder.dataset = dataset
    builder.label_ase.code = orm.load_code(f"tace-label@{LOCAL_COMPUTER}")
    builder.label_ase.calculator = orm.Str("ase.calculators.emt.EMT")
    builder.train.code = orm.load_code(f"tace-train@{DASK_COMPUTER}")
    builder.train.parameters = orm.Dict({
        "model": {"channels": 16, "max_edge_rank": 2, "max_hidden_rank": 1, "correlation": 2, "r_max": 4.5,
                  "radial_mlp": [32, 32]},
        "max_epochs": 30, "patience": 10, "batch_size": 4, "valid_fraction": 0.1,
        "forces_weight": 10.0, "stress_weight": 10.0, "dtype": "float32",
    })
    builder.ensemble_size = orm.Int(3)
    builder.md.code = orm.load_code(f"tace-md@{DASK_COMPUTER}")
    builder.exploration = orm.List([
        {"name": "600 K", "temperatures": [600], "steps": 200, "timestep": 2.0, "save_interval": 10,
         "start_from": "dataset", "dataset_starts": 3},
    ])
    builder.selection = orm.Dict({"trust_low": 0.1, "trust_high": 0.6, "max_selected": 8})
    builder.stopping = orm.Dict({"accurate_fraction": 0.9, "max_iterations": 3})
    builder.metadata.label = "Cu-Ni EMT active learning"
    return builder


def main(arguments: list[str]) -> None:
    ensure_broker(workers=2 if "--submit" in arguments else 1)
    if "--submit" in arguments:
        from aiida.engine import submit

        node = submit(generation_builder())
        print(f"submitted {node.process_label}<{node.pk}>; following it until it ends")
        follow(node)
    else:
        node = run_with_progress(generation_builder())
    print("\n".join(summary_lines(node)))
    if not node.is_finished_ok:
        raise SystemExit(f"generation failed: {node.exit_message}")
    ensure_local_cluster()
    run_or_submit(learning_builder(node.outputs.dataset), Path("al_cu_ni_emt"), arguments)


if __name__ == "__main__":  # verdi run runs it as __main__; importing it only defines its helpers
    main(sys.argv[1:])
