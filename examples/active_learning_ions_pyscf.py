"""Active learning of water, its ions and water in a field, labelled by PySCF, with charge and field as inputs.

    pip install -e ".[dft]" && tace-aiida setup          # once: PySCF, profile, computers, codes
    verdi run examples/active_learning_ions_pyscf.py     # about 20 minutes on 2 CPU cores

Four starting molecules: H2O, H2O in a uniform field of 0.3 V/Å, OH- (charge -1) and H3O+ (charge
+1). Their conditions go in as the workchain's ``conditions`` input: every MD run starts from one of
them at its conditions, every frame selected from that run keeps them, and PySCF labels each frame
(PBE/def2-SVP: energy, forces, dipole) at its own charge and field (``condition_parameters`` of the
``pyscf_dft`` recipe). The members embed charge and field and give the dipole as ``-dE/dF``
(``field_dipole``), so the ensemble also predicts polarizabilities and Born effective charges. Loop
settings are the ``fast`` protocol's with shorter time steps (hydrogen) and one 300 K stage.
"""

import sys
from pathlib import Path

from aiida import orm
from ase import Atoms
from ase.build import molecule
from tace_aiida.workflows.active_learning import ActiveLearningWorkChain

from tace_aiida.dask_cluster import ensure_local_cluster
from tace_aiida.labelling import recipes
from tace_aiida.profile import DASK_COMPUTER, LOCAL_COMPUTER
from tace_aiida.run_summary import run_or_submit

#: label -> (molecule, conditions)
STARTS = {
    "water": (molecule("H2O"), {}),
    "water_in_field": (molecule("H2O"), {"electric_field": [0.0, 0.0, 0.3]}),  # V/Å
    "hydroxide": (Atoms("OH", positions=[[0.0, 0.0, 0.0], [0.0, 0.0, 0.97]]), {"charge": -1}),
    "hydronium": (Atoms("OH3", positions=[[0.0, 0.0, 0.12], [0.0, 0.94, -0.25], [0.81, -0.47, -0.25],
                                          [-0.81, -0.47, -0.25]]), {"charge": 1}),
}


def main() -> None:
    ensure_local_cluster()
    codes = {"train": orm.load_code(f"tace-train@{DASK_COMPUTER}"), "md": orm.load_code(f"tace-md@{DASK_COMPUTER}"),
             "label": orm.load_code(f"tace-label@{LOCAL_COMPUTER}")}
    recipe = recipes.pyscf_dft("PBE", "def2-SVP")
    overrides = {
        "conditions": {label: conditions for label, (_, conditions) in STARTS.items() if conditions},
        "label_ase": {"parameters": recipe["parameters"], "condition_parameters": recipe["condition_parameters"],
                      "properties": ["energy", "forces", "dipole"], "structures_per_job": 10},
        "train": {"parameters": {"model": {"embed_charge": True, "embed_field": True, "field_dipole": True},
                                 "dipole_weight": 100.0}},
        "exploration": [{"name": "300 K", "temperatures": [300], "steps": 400, "timestep": 0.5, "save_interval": 10}],
    }
    structures = {label: orm.StructureData(ase=atoms) for label, (atoms, _) in STARTS.items()}
    builder = ActiveLearningWorkChain.get_builder_from_protocol(
        codes, structures, protocol="fast", overrides=overrides, calculator=recipe["calculator"])
    builder.metadata.label = "water and its ions, PySCF active learning"

    run_or_submit(builder, Path("al_ions_pyscf"), sys.argv[1:])


if __name__ == "__main__":  # verdi run runs it as __main__; importing it only defines its helpers
    main()
