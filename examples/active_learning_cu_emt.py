"""Active learning of a copper potential labelled by EMT, on the embedded default set-up.

    tace-aiida setup                                  # once: profile, computers, codes
    verdi run examples/active_learning_cu_emt.py      # about 12 minutes on 2 CPU cores

Starts from pymatgen-generated supercells of fcc Cu (perfect, with a vacancy, strained; two
randomly displaced copies of each) labelled by ASE's EMT, then loops: trains an ensemble of 4
Cartesian-tensor potentials on the local dask cluster, explores with MD at 300 K, then 600 K, then
900 K, selects the frames the ensemble is unsure about and labels them, until 90 % of the frames of
the last stage are accurate or 8 iterations have run (training runs a fixed number of epochs, so a
run does the same on every machine). `--submit` hands it to the daemon instead. Watch it with
`verdi process list` and `verdi process report <PK>`.
"""

import sys
from pathlib import Path

from aiida import orm
from pymatgen.core import Lattice, Structure
from tace_aiida.workflows.active_learning import ActiveLearningWorkChain

from tace_aiida.dask_cluster import ensure_local_cluster
from tace_aiida.profile import DASK_COMPUTER, LOCAL_COMPUTER
from tace_aiida.run_summary import run_or_submit


def copper_supercells(seed: int = 7) -> dict[str, orm.StructureData]:
    """2x2x2 conventional fcc Cu cells (32 atoms): perfect, with a vacancy, strained by 3 %,
    each in two copies with atoms displaced by up to 0.15 Å so that the first labels carry forces."""
    perfect = Structure.from_spacegroup("Fm-3m", Lattice.cubic(3.61), ["Cu"], [[0, 0, 0]]).make_supercell([2, 2, 2])
    vacancy = perfect.copy()
    vacancy.remove_sites([0])
    strained = perfect.copy()
    strained.apply_strain(0.03)
    structures = {}
    for name, base in (("perfect", perfect), ("vacancy", vacancy), ("strained", strained)):
        for copy in range(2):
            displaced = base.copy()
            displaced.perturb(0.15, min_distance=0.05, seed=seed + copy)
            structures[f"{name}_{copy}"] = orm.StructureData(pymatgen=displaced)
    return structures


def main() -> None:
    ensure_local_cluster()
    builder = ActiveLearningWorkChain.get_builder()
    builder.structures = copper_supercells()
    builder.label_ase.code = orm.load_code(f"tace-label@{LOCAL_COMPUTER}")
    builder.label_ase.calculator = orm.Str("ase.calculators.emt.EMT")
    builder.train.code = orm.load_code(f"tace-train@{DASK_COMPUTER}")
    builder.train.parameters = orm.Dict({
        "model": {"channels": 16, "max_edge_rank": 2, "max_hidden_rank": 1, "correlation": 2, "r_max": 4.5,
                  "radial_mlp": [32, 32]},
        "max_epochs": 80, "patience": 20, "batch_size": 2, "valid_fraction": 0.1,
        "forces_weight": 10.0, "stress_weight": 10.0, "dtype": "float32",
    })
    builder.ensemble_size = orm.Int(4)
    builder.md.code = orm.load_code(f"tace-md@{DASK_COMPUTER}")
    builder.exploration = orm.List([
        {"name": "300 K", "temperatures": [300], "steps": 200, "timestep": 2.0, "save_interval": 10, "max_starts": 3},
        {"name": "600 K", "temperatures": [600], "steps": 200, "timestep": 2.0, "save_interval": 10, "max_starts": 3},
        {"name": "900 K", "temperatures": [900], "steps": 200, "timestep": 2.0, "save_interval": 10, "max_starts": 3},
    ])
    builder.selection = orm.Dict({"trust_low": 0.1, "trust_high": 0.6, "max_selected": 8})
    builder.stopping = orm.Dict({"accurate_fraction": 0.9, "max_iterations": 8})
    builder.metadata.label = "Cu EMT active learning"

    run_or_submit(builder, Path("al_cu_emt"), sys.argv[1:])


main()
