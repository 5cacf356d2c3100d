"""Active learning of a silicon potential labelled by Quantum ESPRESSO (pw.x, PBE), on the embedded default set-up.

    apt-get install -y quantum-espresso               # once: pw.x and UPF files in /usr/share/espresso/pseudo
    tace-aiida setup                                  # once: profile, computers, codes
    verdi run examples/active_learning_si_qe.py       # about 14 minutes on 2 CPU cores

Starts from pymatgen-generated 8-atom cubic cells of diamond Si (at the equilibrium lattice constant,
compressed and stretched by 3 %; atoms displaced by up to 0.1 Å), labelled by pw.x through one
PwBaseWorkChain per structure (aiida-quantumespresso's `fast` protocol, Debian's Si.pbe-rrkj.UPF in a
pseudopotential family made here, 20 Ry wavefunction cutoff, k-points 0.5/Å apart: cheap settings for
a demonstration, not for production). Then loops with the `fast` protocol's settings, except for a 4 Å
cutoff, two stages and 6 selected frames an iteration: trains an ensemble of 4 Cartesian-tensor potentials
on the local dask cluster, explores with MD at 300 K, then 900 K, selects the frames the ensemble is
unsure about and labels them with pw.x, until 90 % of the frames of the last stage are accurate or 8
iterations have run. `--submit` hands it to the daemon instead. Watch it with `verdi process list`
and `verdi process report <PK>`.
"""

import shutil
import sys
from pathlib import Path

from aiida import orm
from aiida.common.exceptions import NotExistent
from pymatgen.core import Lattice, Structure
from tace_aiida.workflows.active_learning import ActiveLearningWorkChain

from tace_aiida.dask_cluster import ensure_local_cluster
from tace_aiida.profile import DASK_COMPUTER, LOCAL_COMPUTER
from tace_aiida.pseudos import ensure_pseudo_family
from tace_aiida.run_summary import run_or_submit

PSEUDO_FAMILY = "tace/Si.pbe-rrkj"
CUTOFFS_RY = (20.0, 80.0)  # ecutwfc, ecutrho of the norm-conserving Si.pbe-rrkj.UPF


def pw_code() -> orm.InstalledCode:
    """The code ``pw@localhost`` (Quantum ESPRESSO's pw.x), created on first use."""
    try:
        return orm.load_code(f"pw@{LOCAL_COMPUTER}")
    except NotExistent:
        pass
    executable = shutil.which("pw.x")
    if executable is None:
        raise SystemExit("pw.x is not on PATH: install Quantum ESPRESSO (apt-get install -y quantum-espresso)")
    return orm.InstalledCode(label="pw", computer=orm.load_computer(LOCAL_COMPUTER), filepath_executable=executable,
                             default_calc_job_plugin="quantumespresso.pw", description="Quantum ESPRESSO pw.x").store()


def silicon_cells(seed: int = 3) -> dict[str, orm.StructureData]:
    """Cubic diamond Si cells (8 atoms, a = 5.43 Å) strained by -3 %, 0 and +3 %, each in two copies with
    atoms displaced by up to 0.1 Å so that the first labels carry forces."""
    perfect = Structure.from_spacegroup("Fd-3m", Lattice.cubic(5.43), ["Si"], [[0, 0, 0]])
    structures = {}
    for name, strain in (("compressed", -0.03), ("equilibrium", 0.0), ("stretched", 0.03)):
        for copy in range(2):
            cell = perfect.copy()
            cell.apply_strain(strain)
            cell.perturb(0.1, min_distance=0.03, seed=seed + copy)
            structures[f"{name}_{copy}"] = orm.StructureData(pymatgen=cell)
    return structures


def main() -> None:
    ensure_local_cluster()
    ensure_pseudo_family(PSEUDO_FAMILY, {"Si": "Si.pbe-rrkj.UPF"}, cutoffs={"Si": CUTOFFS_RY})
    codes = {"train": orm.load_code(f"tace-train@{DASK_COMPUTER}"), "md": orm.load_code(f"tace-md@{DASK_COMPUTER}"),
             "label": pw_code()}
    stages = [{"name": f"{t} K", "temperatures": [t], "steps": 200, "timestep": 2.0, "save_interval": 10, "max_starts": 3}
              for t in (300, 900)]
    overrides = {
        "train": {"parameters": {"model": {"r_max": 4.0}}},
        "exploration": stages,
        "selection": {"max_selected": 6},
        "label_qe": {"kpoints_distance": 0.5, "options": {"withmpi": False, "max_wallclock_seconds": 1800}},
    }
    builder = ActiveLearningWorkChain.get_builder_from_protocol(
        codes, silicon_cells(), protocol="fast", overrides=overrides, pseudo_family=PSEUDO_FAMILY)
    builder.metadata.label = "Si pw.x active learning"

    run_or_submit(builder, Path("al_si_qe"), sys.argv[1:])


if __name__ == "__main__":  # verdi run runs it as __main__; importing it only defines its helpers
    main()
