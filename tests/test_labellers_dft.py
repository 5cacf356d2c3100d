"""Real first-principles and semi-empirical labellers: Quantum ESPRESSO through ``tace.label_qe``, and
tblite, PySCF and CP2K through ``tace.label_ase``. Each test skips when its program or module is
missing (fails instead with ``TACE_REQUIRE_EXTERNAL=1``)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from aiida import orm
from aiida.engine import run_get_node
from ase import Atoms
from ase.build import bulk, molecule
from tace_aiida.model.data import LabelKeys, atoms_to_graph

from tace_aiida.calculations.label_ase import AseLabelCalculation
from tace_aiida.data import TrainingSetData
from tace_aiida.labelling import recipes

from .conftest import CUTOFFS_RY, FAMILY, PW_OPTIONS
from .external import require_module, require_program


def silicon_cells() -> list[Atoms]:
    """Diamond Si2 and a rattled copy."""
    perfect = bulk("Si", "diamond", a=5.43)
    rattled = perfect.copy()
    rattled.rattle(0.05, seed=3)
    return [perfect, rattled]


def run_qe(qe, frames: list[Atoms], overrides: dict | None = None):
    workchain, code = qe
    builder = workchain.get_builder_from_protocol(
        code, TrainingSetData(frames), protocol="fast", pseudo_family=FAMILY, overrides=overrides,
        kpoints_distance=0.8, options=PW_OPTIONS,
    )
    return run_get_node(builder)


def ase_espresso_reference(atoms: Atoms, pw_calculation, directory) -> Atoms:
    """``atoms`` labelled by ASE's own Espresso calculator with the PwCalculation's parameters and k-points."""
    from ase.calculators.espresso import Espresso, EspressoProfile

    from tace_aiida.pseudos import QE_PSEUDO_DIR

    mesh, offset = pw_calculation.inputs.kpoints.get_kpoints_mesh()
    parameters = pw_calculation.inputs.parameters.get_dict()
    reference = atoms.copy()
    reference.calc = Espresso(
        profile=EspressoProfile(command=require_program("pw.x"), pseudo_dir=str(QE_PSEUDO_DIR)),
        input_data=parameters, pseudopotentials={"Si": "Si.pbe-rrkj.UPF"},
        kpts=tuple(mesh), koffset=tuple(int(round(2 * o)) for o in offset), directory=str(directory),
    )
    reference.get_potential_energy()
    return reference


@pytest.mark.slow
def test_qe_labels_match_ase_espresso(qe, tmp_path):
    from tace_aiida.workflows.labelling.pw_base import CrashSafePwBaseWorkChain

    frames = silicon_cells()
    results, node = run_qe(qe, frames)
    assert node.is_finished_ok, node.exit_message
    report = results["report"].get_dict()
    assert report["num_labelled"] == 2 and report["num_failed"] == 0 and report["failures"] == []
    labelled = results["dataset"].get_atoms()
    assert [atoms.info["input_index"] for atoms in labelled] == [0, 1]

    for index, (original, atoms) in enumerate(zip(frames, labelled, strict=True)):
        pw_base = orm.load_node(atoms.info["label_uuid"])
        assert isinstance(pw_base, orm.WorkflowNode) and pw_base.process_class is CrashSafePwBaseWorkChain
        assert pw_base.caller.uuid == node.uuid
        pw_calculation = pw_base.called[-1]
        assert pw_calculation.inputs.parameters["SYSTEM"]["ecutwfc"] == CUTOFFS_RY[0]
        reference = ase_espresso_reference(original, pw_calculation, tmp_path / f"ase_{index}")
        assert np.allclose(atoms.positions, original.positions, atol=1e-8)
        assert atoms.get_potential_energy() == pytest.approx(reference.get_potential_energy(), abs=1e-5)
        assert np.allclose(atoms.get_forces(), reference.get_forces(), atol=1e-4)
        assert np.allclose(atoms.get_stress(), reference.get_stress(), atol=1e-6)

        assert np.allclose(atoms.get_forces().sum(axis=0), 0.0, atol=1e-3)
        pw_stress = pw_calculation.outputs.output_trajectory.get_array("stress")[-1]
        assert np.allclose(pw_stress, pw_stress.T, atol=1e-6)
    perfect, rattled = labelled
    assert np.abs(perfect.get_forces()).max() < 1e-3 < np.abs(rattled.get_forces()).max()
    per_atom = [atoms.get_potential_energy() / len(atoms) for atoms in labelled]
    assert 0.0 < per_atom[1] - per_atom[0] < 0.3

    ancestors = orm.QueryBuilder().append(TrainingSetData, filters={"uuid": results["dataset"].uuid}, tag="dataset")
    ancestors.append(orm.CalcJobNode, with_descendants="dataset")
    callers = {calculation.caller.uuid for calculation in ancestors.all(flat=True)}
    assert callers == {atoms.info["label_uuid"] for atoms in labelled}


@pytest.mark.slow
def test_qe_stress_sign_follows_ase(qe):
    """A compressed cell pushes outwards: ASE's stress is negative on the diagonal (positive pressure)."""
    compressed = bulk("Si", "diamond", a=5.2)
    results, node = run_qe(qe, [compressed])
    assert node.is_finished_ok, node.exit_message
    stress = results["dataset"].get_atoms()[0].get_stress(voigt=False)
    assert np.all(np.diag(stress) < -0.005)
    assert np.allclose(np.diag(stress), stress[0, 0], atol=1e-5)


@pytest.mark.slow
def test_qe_failed_structure_is_reported_not_labelled(qe):
    """Fixed occupations: pw.x refuses Si2H (9 electrons, needs smearing) and labels Si2 (8 electrons)."""
    perfect, rattled = silicon_cells()
    odd = perfect + Atoms("H", positions=[[0.0, 0.0, 1.0]])
    overrides = {"pw": {"parameters": {"SYSTEM": {"occupations": "fixed"}}}}
    results, node = run_qe(qe, [perfect, odd, rattled], overrides)
    assert node.is_finished_ok, node.exit_message
    report = results["report"].get_dict()
    assert (report["num_structures"], report["num_labelled"], report["num_failed"]) == (3, 2, 1)
    [failure] = report["failures"]
    assert failure["index"] == 1 and failure["exit_status"] > 0
    assert failure["error"].startswith("CrashSafePwBaseWorkChain<")
    assert f"exit status {failure['exit_status']}:" in failure["error"]
    assert "; last PwCalculation<" in failure["error"]
    assert [atoms.info["input_index"] for atoms in results["dataset"].get_atoms()] == [0, 2]
    assert results["dataset"].elements == ["Si"]


@pytest.mark.slow
def test_qe_unconverged_structures_fail_the_workchain(qe):
    """One SCF step and no restart: every structure fails with the PwBaseWorkChain's exit status."""
    from aiida_quantumespresso.workflows.pw.base import PwBaseWorkChain
    from tace_aiida.workflows.labelling.qe import QeLabelWorkChain

    overrides = {"max_iterations": 1, "pw": {"parameters": {"ELECTRONS": {"electron_maxstep": 1}}}}
    results, node = run_qe(qe, silicon_cells(), overrides)
    assert node.exit_status == QeLabelWorkChain.exit_codes.ERROR_ALL_STRUCTURES_FAILED.status
    assert "dataset" not in results
    report = results["report"].get_dict()
    assert (report["num_structures"], report["num_labelled"], report["num_failed"]) == (2, 0, 2)
    exceeded = PwBaseWorkChain.exit_codes.ERROR_MAXIMUM_ITERATIONS_EXCEEDED.status
    assert [(f["index"], f["exit_status"]) for f in report["failures"]] == [(0, exceeded), (1, exceeded)]
    assert node.exit_message.startswith("No structure could be labelled: structure 0: CrashSafePwBaseWorkChain<")


@pytest.mark.external
def test_qe_refuses_bad_inputs(qe):
    silicon = bulk("Si", "diamond", a=5.43)
    with pytest.raises(ValueError, match=r"structures \[1\] are not periodic"):
        run_qe(qe, [silicon, molecule("H2O")])
    workchain, code = qe
    with pytest.raises(ValueError, match="unknown protocol 'thorough'"):
        run_get_node(workchain.get_builder_from_protocol(code, TrainingSetData([silicon]), protocol="thorough"))
    with pytest.raises(ValueError, match="no pseudopotential family 'SSSP/none'"):
        run_get_node(workchain.get_builder_from_protocol(code, TrainingSetData([silicon]), pseudo_family="SSSP/none"))
    with pytest.raises(ValueError, match="may not change"):
        run_qe(qe, [silicon], {"pw": {"parameters": {"CONTROL": {"calculation": "relax"}}}})


@pytest.mark.external
def test_pseudo_family_is_installed_once(aiida_profile, tmp_path):
    require_module("aiida_pseudo")
    require_program("pw.x")  # Debian's quantum-espresso package ships the UPF files
    from tace_aiida.pseudos import QE_PSEUDO_DIR, ensure_pseudo_family

    family = ensure_pseudo_family("tace-tests/once", {"Si": "Si.pbe-rrkj.UPF"}, cutoffs={"Si": (30, 120)})
    assert family.get_recommended_cutoffs(elements=("Si",), unit="Ry") == (30.0, 120.0)
    assert ensure_pseudo_family("tace-tests/once", {"Si": QE_PSEUDO_DIR / "Si.pbe-rrkj.UPF"}).pk == family.pk
    with pytest.raises(ValueError, match="exists with other files"):
        ensure_pseudo_family("tace-tests/once", {"Si": "Si.pz-vbc.UPF"})
    with pytest.raises(ValueError, match="exists with other cutoffs"):
        ensure_pseudo_family("tace-tests/once", {"Si": "Si.pbe-rrkj.UPF"}, cutoffs={"Si": (40, 160)})
    with pytest.raises(ValueError, match="is a pseudopotential for Si, not C"):
        ensure_pseudo_family("tace-tests/wrong", {"C": "Si.pbe-rrkj.UPF"})
    with pytest.raises(ValueError, match=r"cutoffs are given for \['O'\]"):
        ensure_pseudo_family("tace-tests/partial", {"Si": "Si.pbe-rrkj.UPF"}, cutoffs={"O": (30, 120)})
    with pytest.raises(FileNotFoundError, match="Si.nothing.UPF"):
        ensure_pseudo_family("tace-tests/missing", {"Si": "Si.nothing.UPF"})

    for name in ("Si.pbe-rrkj.UPF", "O.pbe-rrkjus.UPF"):
        (tmp_path / name).write_bytes((QE_PSEUDO_DIR / name).read_bytes())
    assert sorted(ensure_pseudo_family("tace-tests/folder", tmp_path).elements) == ["O", "Si"]
    (tmp_path / "Si.pz-vbc.UPF").write_bytes((QE_PSEUDO_DIR / "Si.pz-vbc.UPF").read_bytes())
    with pytest.raises(ValueError, match="two pseudopotentials for Si"):
        ensure_pseudo_family("tace-tests/folder-2", tmp_path)


def finite_difference_force(atoms: Atoms, calculator, atom: int, axis: int, step: float = 1e-3) -> float:
    """``-dE/dx`` of one coordinate by a central difference (eV/Å)."""
    energies = []
    for sign in (1, -1):
        displaced = atoms.copy()
        displaced.positions[atom, axis] += sign * step
        displaced.calc = calculator
        energies.append(displaced.get_potential_energy())
    return -(energies[0] - energies[1]) / (2 * step)


def label_with(installed_code, frames: list[Atoms], recipe: dict, properties: list[str] | None = None):
    extra = {"properties": orm.List(properties)} if properties else {}
    return run_get_node(AseLabelCalculation, code=installed_code("tace-label"), structures=TrainingSetData(frames),
                        **recipes.as_inputs(recipe), **extra)


def water() -> Atoms:
    atoms = molecule("H2O")
    atoms.rattle(0.02, seed=1)
    return atoms


@pytest.mark.slow
@pytest.mark.parametrize("module, recipe, tolerance", [
    ("tblite", recipes.gfn2_xtb(), 1e-4),
    ("pyscf", recipes.pyscf_dft("PBE", "def2-SVP"), 2e-3),
])
def test_molecule_forces_match_finite_differences(aiida_profile, installed_code, module, recipe, tolerance):
    require_module(module)
    from tace_aiida.labelling.runner import calculator_class

    results, node = label_with(installed_code, [water()], recipe)
    assert node.is_finished_ok, node.exit_message
    assert results["report"]["num_labelled"] == 1
    labelled = results["dataset"].get_atoms()[0]
    assert results["dataset"].label_counts == {"energy": 1, "forces": 1, "stress": 0}
    calculator = calculator_class(recipe["calculator"])(**recipe["parameters"])
    reference = finite_difference_force(water(), calculator, atom=0, axis=2)
    assert labelled.get_forces()[0, 2] == pytest.approx(reference, abs=tolerance)
    assert np.allclose(labelled.get_forces().sum(axis=0), 0.0, atol=1e-2)


@pytest.mark.slow
def test_pyscf_refuses_periodic_cells(aiida_profile, installed_code):
    require_module("pyscf")
    results, node = label_with(installed_code, [water(), bulk("Si", "diamond", a=5.43)], recipes.pyscf_dft())
    assert node.is_finished_ok
    assert results["report"]["failures"][0]["index"] == 1
    assert "molecules only" in results["report"]["failures"][0]["error"]


@pytest.mark.slow
def test_cp2k_labels_silicon(aiida_profile, installed_code):
    require_program("cp2k_shell.psmp")
    recipe = recipes.cp2k_pbe(kpoints=(3, 3, 3), cutoff_ry=150.0, basis_set="SZV-MOLOPT-SR-GTH", threads=1)
    results, node = label_with(installed_code, silicon_cells(), recipe)
    assert node.is_finished_ok, node.exit_message
    assert results["report"]["num_labelled"] == 2, results["report"]["failures"]
    perfect, rattled = results["dataset"].get_atoms()
    for atoms in (perfect, rattled):
        assert np.allclose(atoms.get_forces().sum(axis=0), 0.0, atol=1e-3)
    assert np.abs(perfect.get_forces()).max() < 1e-3 < np.abs(rattled.get_forces()).max()
    assert np.allclose(perfect.get_stress()[:3], perfect.get_stress()[0], atol=1e-5)
    assert np.allclose(perfect.get_stress()[3:], 0.0, atol=1e-5)
    assert rattled.get_potential_energy() > perfect.get_potential_energy()
    assert perfect.get_potential_energy() / 2 == pytest.approx(-106.5, abs=1.5)


@pytest.mark.slow
def test_quantum_espresso_labels_born_charges_of_a_crystal(aiida_profile, installed_code):
    """AlAs (LDA, norm-conserving): pw.x energy, forces and stress and ph.x's Born charges land where training reads
    them. The ideal cell's are isotropic and obey the acoustic sum rule; a rattled cell's differ from them."""
    require_program("pw.x")
    require_program("ph.x")
    ideal = bulk("AlAs", "zincblende", a=5.66)
    rattled = ideal.copy()
    rattled.rattle(0.05, seed=1)
    recipe = recipes.espresso_dfpt({"Al": "Al.pz-vbc.UPF", "As": "As.pz-bhs.UPF"}, ecutwfc_ry=16.0, kpts=(4, 4, 4),
                                   threads=1)
    results, node = label_with(installed_code, [ideal, rattled], recipe,
                               ["energy", "forces", "stress", "born_effective_charges"])
    assert node.is_finished_ok, node.exit_message
    assert results["report"]["num_labelled"] == 2, results["report"]["failures"]
    graphs = [atoms_to_graph(atoms, [13, 33], 5.0, LabelKeys(), torch.float64) for atoms in results["dataset"].get_atoms()]
    assert all(bool(graph["has_born_charges"]) and bool(graph["has_stress"]) for graph in graphs)
    born = [graph["born_charges"].numpy() for graph in graphs]
    assert np.abs(born[0][0] - born[0][0, 0, 0] * np.eye(3)).max() < 1e-3, "isotropic in the cubic cell"
    assert 1.8 < born[0][0, 0, 0] < 2.6, "Al in AlAs: about +2.2 e"
    assert np.abs(born[0].sum(axis=0)).max() < 0.05, "acoustic sum rule"
    assert np.abs(graphs[0]["forces"].numpy()).max() < 1e-3
    assert np.abs(born[1] - born[0]).max() > 1e-3
