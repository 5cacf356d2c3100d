"""Active learning of a copper potential labelled by EMT, on the embedded default set-up.

    tace-aiida setup                                  # once: profile, computers, codes
    verdi run examples/active_learning_cu_emt.py      # about 10 minutes on 2 CPU cores

Starts from three pymatgen-generated supercells of fcc Cu (perfect, with a vacancy, strained),
labels them with ASE's EMT, then loops: trains an ensemble of 4 Cartesian-tensor potentials on the
local dask cluster, explores with MD at 300 K then 600 K then 900 K, selects the frames the ensemble
is unsure about, labels them, until 90 % of the explored frames are accurate. Watch it with
`verdi process list` and `verdi process report <PK>`.
"""

from pathlib import Path

from aiida import orm
from aiida.engine import run_get_node
from pymatgen.core import Lattice, Structure

from tace_aiida.dask_cluster import ensure_local_cluster
from tace_aiida.plotting import plot_run
from tace_aiida.profile import DASK_COMPUTER, LOCAL_COMPUTER
from tace_aiida.workflows.active_learning import ActiveLearningWorkChain


def copper_supercells() -> dict[str, orm.StructureData]:
    """A 2x2x2 conventional fcc Cu cell (32 atoms), the same with a vacancy, and one strained by 3 %."""
    perfect = Structure.from_spacegroup("Fm-3m", Lattice.cubic(3.61), ["Cu"], [[0, 0, 0]]).make_supercell([2, 2, 2])
    vacancy = perfect.copy()
    vacancy.remove_sites([0])
    strained = perfect.copy()
    strained.apply_strain(0.03)
    return {name: orm.StructureData(pymatgen=s) for name, s in (("perfect", perfect), ("vacancy", vacancy), ("strained", strained))}


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
        "max_epochs": 60, "time_budget": 60, "batch_size": 2, "valid_fraction": 0.15,
        "forces_weight": 10.0, "stress_weight": 10.0, "dtype": "float32",
    })
    builder.ensemble_size = orm.Int(4)
    builder.md.code = orm.load_code(f"tace-md@{DASK_COMPUTER}")
    builder.exploration = orm.List([
        {"name": "300 K", "temperatures": [300], "steps": 300, "timestep": 2.0, "save_interval": 10},
        {"name": "600 K", "temperatures": [600], "steps": 300, "timestep": 2.0, "save_interval": 10},
        {"name": "900 K", "temperatures": [900], "steps": 300, "timestep": 2.0, "save_interval": 10},
    ])
    builder.selection = orm.Dict({"trust_low": 0.05, "trust_high": 0.5, "max_selected": 8})
    builder.stopping = orm.Dict({"accurate_fraction": 0.9, "max_iterations": 6})
    builder.metadata.label = "Cu EMT active learning"

    results, node = run_get_node(builder)
    report = results["report"].get_dict()
    print(f"ActiveLearningWorkChain<{node.pk}> {node.process_state.value}, exit status {node.exit_status}: "
          f"{report['stop_reason']} after {len(report['iterations'])} iterations")
    for entry in report["iterations"]:
        rmse = entry["valid_forces_rmse"]
        print(f"  iteration {entry['iteration']}: {entry['dataset_size']} structures, accurate "
              f"{entry['accurate_fraction']:.2f}, selected {entry['selected']}, "
              f"validation force RMSE {rmse * 1000:.0f} meV/Å" if rmse is not None else "")
    folder = Path("al_cu_emt")
    folder.mkdir(exist_ok=True)
    for index, potential in enumerate(results["ensemble"].values()):
        print(f"member {index}: PotentialData<{potential.pk}> -> {potential.write_checkpoint(folder / f'member{index}.pt')}")
    for path in plot_run(node, folder):
        print(f"plot: {path}")


main()
