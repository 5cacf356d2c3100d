"""Active learning of a copper potential labelled by EMT, on the embedded default set-up.

    tace-aiida setup                                  # once: profile, computers, codes
    verdi run examples/active_learning_cu_emt.py      # about 12 minutes on 2 CPU cores

Starts from pymatgen-generated supercells of fcc Cu (perfect, with a vacancy, strained; two
randomly displaced copies of each) labelled by ASE's EMT, then loops with the settings of the `fast`
protocol (`workflows/protocols/active_learning.yaml`): trains an ensemble of 4
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
    codes = {"train": orm.load_code(f"tace-train@{DASK_COMPUTER}"), "md": orm.load_code(f"tace-md@{DASK_COMPUTER}"),
             "label": orm.load_code(f"tace-label@{LOCAL_COMPUTER}")}
    builder = ActiveLearningWorkChain.get_builder_from_protocol(
        codes, copper_supercells(), protocol="fast", calculator="ase.calculators.emt.EMT")
    builder.metadata.label = "Cu EMT active learning"

    run_or_submit(builder, Path("al_cu_emt"), sys.argv[1:])


if __name__ == "__main__":  # verdi run runs it as __main__; benchmarks import copper_supercells
    main()
