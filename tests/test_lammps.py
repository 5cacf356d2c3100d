"""LAMMPS driven by a TACE ensemble through ``fix external`` gives the ASE calculator's energy, forces and
pressure, conserves energy in its own NVE, and refuses set-ups it cannot serve."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from ase import Atoms
from ase.io import read
from tace_aiida.model.calculator import TACECalculator
from tace_aiida.model.checkpoint import save_checkpoint
from tace_aiida.model.lammps import TACEFixExternal, import_lammps, main, pair_coeff_arguments, split_script

from .conftest import default_dtype, small_model
from .external import require_module

pytestmark = pytest.mark.external

#: Atoms in :func:`cu_box`.
ATOMS = 32


@pytest.fixture
def cu_checkpoints(tmp_path) -> list[str]:
    """Two float64 random-weight Cu-Ag checkpoints (an ensemble whose members disagree)."""
    paths = []
    with default_dtype(torch.float64):
        for member in range(2):
            model = small_model(seed=20 + member, atomic_numbers=[29, 47],
                                atomic_energies=[-0.3 - 0.1 * member, -0.2],
                                avg_num_neighbors=40.0, scale=20.0)
            paths.append(str(save_checkpoint(tmp_path / f"cu_{member}.pt", model)))
    return paths


@pytest.fixture
def lmp():
    """A serial LAMMPS instance without screen output."""
    require_module("lammps")
    instance = import_lammps().lammps(cmdargs=["-screen", "none", "-log", "none", "-nocite"])
    yield instance
    instance.close()


def cu_box(lmp, boundary: str = "p p p", box: str = "prism 0 2 0 2 0 2 0.4 0.2 -0.3", atoms: str = "box") -> None:
    """A rattled 2x2x2 fcc block of 32 atoms in region ``atoms`` of the box region ``box`` (default: a sheared,
    triclinic, periodic box filled by the block), a third of its atoms of type 2."""
    lmp.commands_string(f"""
        units metal
        atom_style atomic
        boundary {boundary}
        lattice fcc 3.61
        region box {box}
        region slab block 0 2 0 2 0 2
        create_box 2 box
        create_atoms 1 region {atoms}
        set type 1 type/fraction 2 0.33 5
        mass 1 63.546
        mass 2 107.87
        displace_atoms all random 0.15 0.15 0.15 4
    """)


def atoms_from_data_file(lmp, path) -> Atoms:
    """The box and atoms of ``lmp`` through LAMMPS's ``write_data`` and ASE's reader, ordered by atom ID."""
    lmp.command(f"write_data {path}")
    return read(path, format="lammps-data", atom_style="atomic", Z_of_type={1: 29, 2: 47}, units="metal")


def by_id(lmp, name: str) -> np.ndarray:
    """The per-atom array ``name`` of the 32 atoms, ordered by atom ID."""
    ids = lmp.numpy.extract_atom("id")[:ATOMS]
    return lmp.numpy.extract_atom(name)[:ATOMS][np.argsort(ids)].copy()


def test_energy_forces_and_pressure_equal_the_calculator(lmp, cu_checkpoints, tmp_path):
    cu_box(lmp)
    atoms = atoms_from_data_file(lmp, tmp_path / "box.data")
    calculator = TACECalculator(cu_checkpoints, device="cpu", dtype="float64")
    atoms.calc = calculator
    expected_forces, expected_energy, stress = atoms.get_forces(), atoms.get_potential_energy(), atoms.get_stress()
    spread = calculator.results["max_force_std"], calculator.results["energy_std"]

    TACEFixExternal(lmp, cu_checkpoints, elements=["Cu", "Ag"], device="cpu", dtype="float64")
    lmp.commands_string("""
        thermo_style custom step pe pxx pyy pzz pxy pxz pyz
        variable max_force_std equal f_tace[1]
        variable energy_std equal f_tace[2]
        run 0
    """)
    forces = by_id(lmp, "f")
    assert np.abs(expected_forces).max() > 1e-2
    assert np.abs(forces - expected_forces).max() < 1e-10
    assert abs(lmp.get_thermo("pe") - expected_energy) < 1e-10
    # No velocities: the pressure is the virial's alone, P = -stress (Voigt xx yy zz yz xz xy).
    bar = lmp.extract_global("nktv2p")  # LAMMPS's eV/Å^3 in bar
    xx, yy, zz, yz, xz, xy = -stress * bar
    pressures = [lmp.get_thermo(name) for name in ("pxx", "pyy", "pzz", "pxy", "pxz", "pyz")]
    assert np.abs(stress).max() * bar > 10.0
    assert np.allclose(pressures, [xx, yy, zz, xy, xz, yz], rtol=0, atol=1e-6)
    assert spread[0] > 0 and spread[1] > 0
    assert abs(lmp.extract_variable("max_force_std") - spread[0]) < 1e-12
    assert abs(lmp.extract_variable("energy_std") - spread[1]) < 1e-12


@pytest.mark.slow
def test_lammps_nve_conserves_energy(lmp, cu_checkpoints):
    """200 velocity-Verlet steps of 0.5 fs at 600 K in LAMMPS, with a drift of 10 Å/ps along x that carries
    atoms across the box's faces (LAMMPS wraps them) and LAMMPS re-sorting its atoms every 20 steps."""
    cu_box(lmp)
    TACEFixExternal(lmp, cu_checkpoints[:1], elements=["Cu", "Ag"], device="cpu", dtype="float64")
    lmp.commands_string("""
        velocity all create 600 7 mom yes rot no dist gaussian
        velocity all set 10.0 NULL NULL sum yes units box
        timestep 0.0005
        atom_modify sort 20 1.0
        fix nve all nve
        thermo_style custom step pe ke etotal
        thermo 1
        run 0
    """)
    start = lmp.get_thermo("etotal")
    first_ids = lmp.numpy.extract_atom("id")[:ATOMS].copy()
    first_images = by_id(lmp, "image")
    drifts, potential = [], []
    for _ in range(20):
        lmp.command("run 10 post no")
        drifts.append(lmp.get_thermo("etotal") - start)
        potential.append(lmp.get_thermo("pe"))
    assert (lmp.numpy.extract_atom("id")[:ATOMS] != first_ids).any()  # re-sorted
    assert (by_id(lmp, "image") != first_images).any()  # wrapped across a face
    assert max(potential) - min(potential) > 0.05  # eV: the atoms move
    assert np.abs(drifts).max() < 1e-4


def test_refuses_what_it_cannot_serve(lmp, cu_checkpoints):
    cu_box(lmp)
    with pytest.raises(ValueError, match=r"1 elements given \(Cu\) for 2 LAMMPS atom types"):
        TACEFixExternal(lmp, cu_checkpoints, elements=["Cu"])
    with pytest.raises(ValueError, match="not chemical elements: 'Cux'"):
        TACEFixExternal(lmp, cu_checkpoints, elements=["Cu", "Cux"])
    with pytest.raises(ValueError, match="Au"):
        TACEFixExternal(lmp, cu_checkpoints, elements=["Cu", "Au"])


def test_refuses_units_other_than_metal(lmp, cu_checkpoints):
    lmp.command("units real")
    with pytest.raises(ValueError, match="'units metal', not 'real'"):
        TACEFixExternal(lmp, cu_checkpoints, elements=["Cu"])


SCRIPT = """# a LAMMPS input as a user writes it
units metal
atom_style atomic
read_data {data}
pair_style tace   # the model
pair_coeff * * {checkpoints} Cu Ag
variable max_force_std equal f_tace[1]
run 0
print "energy $(pe:%.12f) spread ${{max_force_std}}" file {result}
"""


def test_input_script_runs_with_pair_style_tace(lmp, cu_checkpoints, tmp_path):
    """``tace-lammps -in`` runs a plain script: the energy it prints is the ASE calculator's."""
    cu_box(lmp)
    atoms = atoms_from_data_file(lmp, tmp_path / "box.data")
    atoms.calc = TACECalculator(cu_checkpoints, device="cpu")
    script = tmp_path / "in.lammps"
    script.write_text(SCRIPT.format(data=tmp_path / "box.data", checkpoints=" ".join(cu_checkpoints),
                                    result=tmp_path / "result.txt"))
    assert main(["-in", str(script), "-log", str(tmp_path / "log.lammps"), "--device", "cpu"]) == 0
    words = (tmp_path / "result.txt").read_text().split()
    assert abs(float(words[1]) - atoms.get_potential_energy()) < 1e-9
    assert float(words[3]) == pytest.approx(atoms.calc.results["max_force_std"], rel=1e-5)


def test_input_script_takes_lammps_options_and_variables(lmp, cu_checkpoints, tmp_path, capsys):
    """LAMMPS's own command-line options pass through ``tace-lammps``, and ``-var`` values reach the script,
    the ``pair_coeff`` line included; an undefined variable there is an error that names it."""
    cu_box(lmp)
    atoms = atoms_from_data_file(lmp, tmp_path / "box.data")
    atoms.calc = TACECalculator(cu_checkpoints[1], device="cpu")
    script = tmp_path / "in.lammps"
    script.write_text(SCRIPT.format(data="${data}", checkpoints="${model}", result="${result}"))
    options = ["-in", str(script), "-log", "none", "--device", "cpu", "-screen", "none", "-var", "data",
               str(tmp_path / "box.data"), "-var", "result", str(tmp_path / "result.txt")]
    assert main([*options, "-var", "model", cu_checkpoints[1]]) == 0
    assert abs(float((tmp_path / "result.txt").read_text().split()[1]) - atoms.get_potential_energy()) < 1e-9
    with pytest.raises(SystemExit) as stopped:
        main(options)
    assert stopped.value.code == 2
    assert "illegal variable model" in capsys.readouterr().err
    with pytest.raises(SystemExit) as stopped:
        main([*options, "--devise", "cpu"])  # a misspelt option reaches LAMMPS, which refuses it
    assert stopped.value.code == 2
    assert "did not start with the options" in capsys.readouterr().err


def test_input_script_split_and_its_refusals():
    before, pair_coeff, after = split_script(SCRIPT.format(data="box.data", checkpoints="a.pt b.pt", result="r.txt"))
    assert pair_coeff_arguments(pair_coeff) == (["a.pt", "b.pt"], ["Cu", "Ag"])
    assert "read_data box.data" in before and "pair_" not in before
    assert after.startswith("variable max_force_std") and "pair_" not in after
    with pytest.raises(ValueError, match="'pair_style tace' \\(found 'pair_style eam'\\)"):
        split_script("units metal\npair_style eam\npair_coeff * * Cu_u3.eam\n")
    with pytest.raises(ValueError, match="found no pair_style"):
        split_script("units metal\nrun 0\n")
    with pytest.raises(ValueError, match="needs a following 'pair_coeff"):
        split_script("pair_style tace\npair_coeff 1 1 a.pt Cu\n")
    with pytest.raises(ValueError, match="needs checkpoints, then one element per atom type"):
        pair_coeff_arguments("pair_coeff * * Cu Ag  # no checkpoint")


def test_a_failing_model_stops_the_run_and_is_raised(lmp, cu_checkpoints):
    """An exception inside the callback (which LAMMPS cannot see) stops the run at that step, leaves NaN forces
    rather than plausible ones, ends later runs at once, and is raised by ``check``."""
    cu_box(lmp)
    fix = TACEFixExternal(lmp, cu_checkpoints[:1], elements=["Cu", "Ag"], device="cpu", dtype="float64")
    evaluate = fix.calculator.calculate

    def fail_from_step_3(atoms, properties):
        if lmp.extract_global("ntimestep") >= 3:
            raise torch.OutOfMemoryError("CUDA out of memory (a stand-in)")
        evaluate(atoms, properties)

    fix.calculator.calculate = fail_from_step_3
    lmp.commands_string("velocity all create 300 1\nfix nve all nve\nrun 20")
    assert lmp.extract_global("ntimestep") == 3
    assert np.isnan(by_id(lmp, "f")).all()
    lmp.command("run 10")
    assert lmp.extract_global("ntimestep") == 3
    with pytest.raises(RuntimeError, match="failed at step 3: OutOfMemoryError"):
        fix.check()


def test_input_script_with_other_units_is_refused(cu_checkpoints, tmp_path, capsys):
    require_module("lammps")
    script = tmp_path / "in.lammps"
    script.write_text(f"units real\nregion box block 0 5 0 5 0 5\ncreate_box 2 box\npair_style tace\n"
                      f"pair_coeff * * {cu_checkpoints[0]} Cu Ag\nrun 0\n")
    with pytest.raises(SystemExit) as stopped:
        main(["-in", str(script), "-log", "none", "--device", "cpu"])
    assert stopped.value.code == 2
    assert "'units metal', not 'real'" in capsys.readouterr().err


def test_slab_pressure_has_the_model_virial(lmp, cu_checkpoints, tmp_path):
    """A box open along z (a slab): LAMMPS's pressure is the model's virial over the box volume, as a pair style's
    would be, so a barostat on x and y works."""
    cu_box(lmp, boundary="p p f", box="block 0 2 0 2 -1.5 3.5", atoms="slab")
    atoms = atoms_from_data_file(lmp, tmp_path / "slab.data")
    atoms.pbc = [True, True, False]
    calculator = TACECalculator(cu_checkpoints, device="cpu", dtype="float64")
    xx, yy, zz, yz, xz, xy = calculator.get_property("virial", atoms) / atoms.get_volume()
    TACEFixExternal(lmp, cu_checkpoints, elements=["Cu", "Ag"], device="cpu", dtype="float64")
    lmp.commands_string("thermo_style custom step pe pxx pyy pzz pxy pxz pyz\nrun 0")
    bar = lmp.extract_global("nktv2p")
    pressures = [lmp.get_thermo(name) for name in ("pxx", "pyy", "pzz", "pxy", "pxz", "pyz")]
    assert abs(lmp.get_thermo("pe") - calculator.results["energy"]) < 1e-10
    assert np.abs(pressures).max() > 10.0
    assert np.allclose(pressures, np.array([xx, yy, zz, xy, xz, yz]) * bar, rtol=0, atol=1e-6)
