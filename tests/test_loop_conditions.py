"""Conditions (charge, spin, fidelity, field) through the loop: labeller keywords, MD trajectories, inputs, a real run."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from aiida import orm
from aiida.engine import run_get_node
from ase import Atoms
from ase.build import molecule
from ase.io import read, write
from tace_aiida.model import md
from tace_aiida.model.calculator import TACECalculator
from tace_aiida.model.checkpoint import save_checkpoint
from tace_aiida.model.data import LabelKeys, atoms_to_graph
from tace_aiida.model.structure_conditions import condition_info
from tace_aiida.workflows.active_learning import ActiveLearningWorkChain

from tace_aiida.labelling import recipes, runner
from tace_aiida.labelling.runner import condition_keywords

from .conftest import default_dtype, small_model
from .external import require_module
from .helpers.loop import builder_for, called

MOLECULE = Atoms("CCONH", positions=[[0, 0, 0], [1.45, 0.1, 0], [2.2, 1.1, 0.2], [-0.7, 1.2, 0.1], [-0.5, -0.9, 0.3]])
TBLITE = {"charge": "charge", "multiplicity": "multiplicity"}


def with_info(atoms: Atoms, **info) -> Atoms:
    atoms = atoms.copy()
    atoms.info.update(info)
    return atoms


# ------------------------------------------------------------------------------------------- labeller keywords


def test_conditions_reach_the_mapped_calculator_keywords():
    cation = with_info(MOLECULE, charge=1, spin=2, fidelity=1)
    assert condition_keywords(cation, TBLITE) == {"charge": 1, "multiplicity": 2}
    assert condition_keywords(cation, {"charge": "charge", "spin": "unpaired_electrons"}) == {"charge": 1, "spin": 1}
    field = condition_keywords(with_info(MOLECULE, electric_field=[0.0, 0.1, 0.0]), {"efield": "electric_field"})
    assert np.array_equal(field["efield"], [0.0, 0.1, 0.0])
    assert condition_keywords(MOLECULE, TBLITE) == {"charge": 0, "multiplicity": 1}, "neutral values when info has none"


@pytest.mark.parametrize(("info", "mapping", "named"), [
    ({"charge": -1}, {}, "charge is -1.0"),
    ({"spin": 3}, {"charge": "charge"}, "spin is 3.0"),
    ({"electric_field": [0, 0, 0.2]}, TBLITE, "electric_field is [0.0, 0.0, 0.2]"),
])
def test_a_condition_the_labeller_would_drop_is_refused(info, mapping, named):
    with pytest.raises(ValueError, match=named.replace("[", r"\[").replace("]", r"\]")):
        condition_keywords(with_info(MOLECULE, **info), mapping)


def test_a_fractional_charge_is_refused_by_name():
    with pytest.raises(ValueError, match="integer charge and multiplicity, not 0.5"):
        condition_keywords(with_info(MOLECULE, charge=0.5), TBLITE)


@pytest.mark.external
def test_tace_label_labels_each_structure_at_its_own_charge_and_spin(tmp_path, monkeypatch):
    """A neutral and a cationic water labelled in one job equal tblite run directly at those conditions;
    the dipole is labelled on request; a cation with no charge keyword fails alone, by name."""
    tblite = require_module("tblite.ase")
    neutral, cation = molecule("H2O"), with_info(molecule("H2O"), charge=1, spin=2)
    write(tmp_path / runner.STRUCTURES, [neutral, cation], format="extxyz")
    recipe = recipes.gfn2_xtb()
    assert recipe["condition_parameters"] == TBLITE
    settings = {"calculator": recipe["calculator"], "parameters": recipe["parameters"],
                "properties": ["energy", "forces", "dipole"], "condition_parameters": recipe["condition_parameters"]}
    (tmp_path / runner.SETTINGS).write_text(json.dumps(settings))
    monkeypatch.chdir(tmp_path)
    report = runner.label_all(tmp_path)
    assert [entry["status"] for entry in report] == ["ok", "ok"]
    labelled = runner.read_structures(tmp_path / runner.LABELLED)
    for frame, (charge, multiplicity) in zip(labelled, [(0, 1), (1, 2)], strict=True):
        direct = frame.copy()
        direct.calc = tblite.TBLite(**recipe["parameters"], charge=charge, multiplicity=multiplicity)
        assert frame.get_potential_energy() == pytest.approx(direct.get_potential_energy(), abs=1e-6)
        assert np.allclose(frame.get_forces(), direct.get_forces(), atol=1e-6)
        assert np.allclose(frame.get_dipole_moment(), direct.get_dipole_moment(), atol=1e-6)
    assert labelled[1].info["charge"] == 1 and labelled[1].info["spin"] == 2
    assert labelled[1].get_potential_energy() - labelled[0].get_potential_energy() > 5.0, "an ionisation energy"

    settings.pop("condition_parameters")
    (tmp_path / runner.SETTINGS).write_text(json.dumps(settings))
    report = runner.label_all(tmp_path)
    assert report[0]["status"] == "ok" and report[1]["status"] == "failed"
    assert "charge is 1.0" in report[1]["error"]


@pytest.mark.external
def test_pyscf_in_a_field_gives_forces_as_the_energy_gradient_and_the_dipole_as_its_field_derivative():
    """Hartree-Fock water cation in a field: forces = -dE/dR and dipole = -dE/dF by central differences; the
    field changes the energy."""
    require_module("pyscf")
    from tace_aiida.labelling.pyscf_calculator import PySCFCalculator

    settings = {"xc": "HF", "basis": "sto-3g", "charge": 1, "spin": 1, "conv_tol": 1e-12}
    field = np.array([0.1, -0.2, 0.15])

    def energy(positions: np.ndarray, applied: np.ndarray) -> float:
        atoms = molecule("H2O")
        atoms.positions = positions
        atoms.calc = PySCFCalculator(**settings, electric_field=applied)
        return atoms.get_potential_energy()

    atoms = molecule("H2O")
    atoms.rattle(0.05, seed=1)
    atoms.calc = PySCFCalculator(**settings, electric_field=field)
    forces, dipole, step = atoms.get_forces(), atoms.get_dipole_moment(), 1e-4
    for index in np.ndindex(3, 3):
        shifted = [atoms.positions.copy() for _ in range(2)]
        shifted[0][index] += step
        shifted[1][index] -= step
        numerical = -(energy(shifted[0], field) - energy(shifted[1], field)) / (2 * step)
        assert forces[index] == pytest.approx(numerical, abs=1e-5), index
    for axis in range(3):
        delta = np.eye(3)[axis] * 1e-3
        numerical = -(energy(atoms.positions, field + delta) - energy(atoms.positions, field - delta)) / 2e-3
        assert dipole[axis] == pytest.approx(numerical, abs=1e-6), axis
    assert abs(energy(atoms.positions, field) - energy(atoms.positions, np.zeros(3))) > 1e-2


@pytest.mark.external
def test_pyscf_born_charges_obey_the_sum_rule_and_the_polarizability_is_symmetric():
    """Finite-field response of Hartree-Fock water and its cation: the Born charges sum to Q I over the atoms (the
    field pushes the ion by Q F), the polarizability is symmetric and positive definite."""
    require_module("pyscf")
    from tace_aiida.labelling.pyscf_calculator import PySCFCalculator

    for charge, spin in ((0, 0), (1, 1)):
        atoms = molecule("H2O")
        atoms.rattle(0.05, seed=2)
        atoms.calc = PySCFCalculator(xc="HF", basis="6-31g", charge=charge, spin=spin, conv_tol=1e-12,
                                     electric_field=[0.0, 0.1, 0.0])
        born = atoms.calc.get_property("born_effective_charges", atoms)
        alpha = atoms.calc.get_property("polarizability", atoms)
        assert born.shape == (3, 3, 3)
        assert np.abs(born.sum(axis=0) - charge * np.eye(3)).max() < 1e-4, charge
        assert np.abs(alpha - alpha.T).max() < 1e-3 * np.abs(alpha).max()
        assert np.linalg.eigvalsh(alpha).min() > 0.1, "Å^3, a few tenths for water in a small basis"


@pytest.mark.external
def test_tace_label_labels_dipoles_polarizabilities_and_born_charges_with_pyscf(tmp_path):
    """The tensor labels of a molecule in a field land where training reads them (dipole, polarizability, Born
    charges), equal to PySCF's run directly; tensor labels the input carried are replaced, not kept."""
    require_module("pyscf")
    from tace_aiida.labelling.pyscf_calculator import PySCFCalculator

    stale = with_info(molecule("H2O"), electric_field=[0.0, 0.0, 0.2], polarizability=np.full(9, 7.0))
    stale.new_array("born_effective_charges", np.full((3, 9), 7.0))
    second = with_info(molecule("H2O"), polarizability=np.full(9, 7.0))
    second.new_array("born_effective_charges", np.full((3, 9), 7.0))
    write(tmp_path / runner.STRUCTURES, [stale, second], format="extxyz")
    recipe = recipes.pyscf_dft("HF", "sto-3g")
    properties = ["energy", "forces", "dipole", "polarizability", "born_effective_charges"]
    (tmp_path / runner.SETTINGS).write_text(json.dumps({
        "calculator": recipe["calculator"], "parameters": recipe["parameters"],
        "condition_parameters": recipe["condition_parameters"], "properties": properties}))
    assert [entry["status"] for entry in runner.label_all(tmp_path)] == ["ok", "ok"]
    frame, _ = read(tmp_path / runner.LABELLED, ":")
    direct = molecule("H2O")
    direct.calc = PySCFCalculator(**recipe["parameters"], electric_field=[0.0, 0.0, 0.2])
    assert np.allclose(frame.get_dipole_moment(), direct.get_dipole_moment(), atol=1e-6)
    assert np.allclose(np.reshape(frame.info["polarizability"], (3, 3)), direct.calc.get_property("polarizability", direct),
                       atol=1e-6)
    born = direct.calc.get_property("born_effective_charges", direct)
    graph = atoms_to_graph(frame, [1, 8], 5.0, LabelKeys(), torch.float64)
    assert bool(graph["has_born_charges"]) and np.allclose(graph["born_charges"].numpy(), born, atol=1e-6)
    assert np.abs(born).max() > 0.1

    (tmp_path / runner.SETTINGS).write_text(json.dumps({"calculator": recipe["calculator"], "parameters": recipe["parameters"],
                                                         "condition_parameters": recipe["condition_parameters"]}))
    runner.label_all(tmp_path)
    for frame in read(tmp_path / runner.LABELLED, ":"):
        graph = atoms_to_graph(frame, [1, 8], 5.0, LabelKeys(), torch.float64)
        assert not bool(graph["has_born_charges"]) and not bool(graph["has_polarizability"])


@pytest.mark.external
def test_pyscf_finishes_an_scf_diis_does_not_converge_with_the_second_order_solver():
    """Three DIIS cycles are too few; the second-order solver then reaches the same state (energy 1e-8 eV, forces
    1e-4 eV/Å), in a field too."""
    require_module("pyscf")
    from tace_aiida.labelling.pyscf_calculator import PySCFCalculator

    atoms = molecule("H2O")
    atoms.rattle(0.1, seed=3)
    results = []
    for cycles in (100, 3):
        trial = atoms.copy()
        trial.calc = PySCFCalculator(xc="PBE", basis="sto-3g", max_cycle=cycles, conv_tol=1e-10,
                                     electric_field=[0.1, 0.0, 0.3])
        results.append((trial.get_potential_energy(), trial.get_forces()))
    assert results[1][0] == pytest.approx(results[0][0], abs=1e-8)
    assert np.abs(results[1][1] - results[0][1]).max() < 1e-4


def test_bad_condition_settings_stop_the_job_by_name(tmp_path):
    (tmp_path / runner.SETTINGS).write_text(json.dumps({"calculator": "ase.calculators.emt.EMT",
                                                        "condition_parameters": {"charge": "total_charge"}}))
    with pytest.raises(ValueError, match="condition_parameters"):
        runner.read_settings(tmp_path)


# ------------------------------------------------------------------------------------------------ MD trajectory


def test_md_runs_with_the_structures_conditions_and_records_them(tmp_path):
    with default_dtype(torch.float64):
        paths = [str(save_checkpoint(tmp_path / f"member_{seed}.pt",
                                     small_model(seed=seed, embed_charge=True, embed_spin=True))) for seed in (1, 2)]
    cation = with_info(MOLECULE, charge=1, spin=2)
    settings = md.MDSettings(checkpoints=paths, temperature=300.0, steps=4, save_interval=2, device="cpu")
    arrays, summary = md.run_md(cation, settings, TACECalculator(paths, device="cpu"))
    assert summary["frames"] == 3
    assert arrays["charge"].tolist() == [1.0] * 3 and arrays["spin"].tolist() == [2.0] * 3
    assert arrays["fidelity"].tolist() == [0] * 3 and arrays["electric_field"].shape == (3, 3)
    first = cation.copy()
    first.calc = TACECalculator(paths, device="cpu")
    assert arrays["energies"][0] == pytest.approx(first.get_potential_energy(), abs=1e-10)
    neutral = MOLECULE.copy()
    neutral.calc = TACECalculator(paths, device="cpu")
    assert abs(neutral.get_potential_energy() - arrays["energies"][0]) > 1e-3, "the model ran at the cation's charge"


# --------------------------------------------------------------------------------------------- loop inputs


def water_builder(installed_code, conditions: dict, model: dict | None = None, mapping: dict | None = TBLITE,
                  recipe: dict | None = None, labels: list[str] | None = None):
    """A loop over water molecules labelled by ``recipe`` (GFN2-xTB): ``labels``, or a neutral one and one per entry of
    ``conditions``."""
    recipe = recipe or recipes.gfn2_xtb()
    builder = builder_for(installed_code, calculator=recipe["calculator"],
                          model=model if model is not None else {"embed_charge": True, "embed_spin": True})
    builder.structures = {label: orm.StructureData(ase=molecule("H2O")) for label in labels or ["neutral", *conditions]}
    builder.conditions = orm.Dict(conditions)
    builder.label_ase.parameters = orm.Dict(recipe["parameters"])
    if mapping is not None:
        builder.label_ase.condition_parameters = orm.Dict(mapping)
    return builder


@pytest.mark.parametrize(("conditions", "model", "mapping", "message"), [
    ({"anion": {"charge": -1}}, None, TBLITE, r"name structures \['anion'\] that are not in `structures`"),
    ({"cation": {"charge": 1, "spin": 2}}, None, None,
     r"structures \['cation'\] have a charge that is not neutral, but `label_ase.condition_parameters` passes no charge"),
    ({"cation": {"charge": 1, "spin": 2}}, {"embed_spin": True}, TBLITE,
     r"differ in charge \(\['0.0', '1.0'\]\), but the model does not embed it: set `train.parameters.model.embed_charge`"),
    ({"cation": {"charge": 1, "spin": 0}}, None, TBLITE, r"conditions of structure 'cation': info\['spin'\]"),
    ({"cation": {"charge": 1, "colour": "red"}}, None, TBLITE, r"unknown conditions \['colour'\]"),
])
def test_conditions_the_loop_cannot_honour_are_refused_by_name(aiida_profile, installed_code, conditions, model, mapping,
                                                                message):
    from aiida.engine import run

    with pytest.raises(ValueError, match=message):
        run(water_builder(installed_code, conditions, model, mapping, labels=["neutral", "cation"]))


def test_a_structure_label_the_loop_needs_for_itself_is_refused(aiida_profile, installed_code):
    from aiida.engine import run

    with pytest.raises(ValueError, match=r"structure labels \['conditions'\] are reserved"):
        run(water_builder(installed_code, {}, labels=["neutral", "conditions"]))


@pytest.mark.slow
def test_the_loop_labels_trains_and_explores_a_cation_and_a_molecule_in_a_field(fast_polling, installed_code):
    """Every frame explored from the cation carries charge 1 and spin 2, every frame explored from the molecule
    in a field carries the field: MD runs at them, the labels (energy, forces, dipole, Born charges) equal PySCF's at
    them, and the members embed them and learn dipoles and Born charges as field derivatives (``field_dipole``)."""
    require_module("pyscf")
    from tace_aiida.labelling.pyscf_calculator import PySCFCalculator

    recipe = recipes.pyscf_dft("HF", "sto-3g")
    conditions = {"cation": {"charge": 1, "spin": 2}, "in_field": {"electric_field": [0.0, 0.2, 0.3]}}
    model = {"embed_charge": True, "embed_spin": True, "embed_field": True, "field_dipole": True}
    builder = water_builder(installed_code, conditions, model=model, mapping=recipe["condition_parameters"],
                            recipe=recipe)
    builder.label_ase.properties = orm.List(["energy", "forces", "dipole", "born_effective_charges"])
    builder.stopping = orm.Dict({"max_iterations": 1})
    builder.exploration = orm.List([{"temperatures": [300], "steps": 20, "timestep": 0.5, "save_interval": 4}])
    results, node = run_get_node(builder)
    assert node.exit_status == ActiveLearningWorkChain.exit_codes.ERROR_MAX_ITERATIONS.status, node.exit_message

    expected = {builder.structures[label].uuid: condition_info(conditions.get(label, {})) for label in builder.structures}
    md_runs = called(node, "tace.md")
    assert len(md_runs) == 3 and all("trajectory" in run.outputs for run in md_runs)
    of_source = dict(expected)
    for run in md_runs:
        wanted = expected[run.inputs.structure.uuid]
        assert ("conditions" in run.inputs) == (wanted != condition_info({}))
        trajectory = run.outputs.trajectory
        assert set(trajectory.get_array("charge")) == {wanted["charge"]}
        assert np.allclose(trajectory.get_array("electric_field"), wanted["electric_field"])
        of_source[trajectory.uuid] = wanted

    frames = results["dataset"].get_atoms()
    assert len(frames) == 3 + 3
    for frame in frames:
        wanted = of_source[frame.info["source_uuid"]]
        assert frame.info["charge"] == wanted["charge"] and frame.info["spin"] == wanted["spin"]
        assert np.allclose(frame.info.get("electric_field", np.zeros(3)), wanted["electric_field"])
        direct = frame.copy()
        direct.calc = PySCFCalculator(**recipe["parameters"], charge=int(wanted["charge"]),
                                      spin=int(wanted["spin"]) - 1, electric_field=wanted["electric_field"])
        assert frame.get_potential_energy() == pytest.approx(direct.get_potential_energy(), abs=1e-5)
        assert np.allclose(frame.get_forces(), direct.get_forces(), atol=1e-4)
        assert np.allclose(frame.info["dipole"], direct.get_dipole_moment(), atol=1e-5)
        born = direct.calc.get_property("born_effective_charges", direct)
        labels = atoms_to_graph(frame, [1, 8], 5.0, LabelKeys(), torch.float64)
        assert bool(labels["has_born_charges"]) and np.allclose(labels["born_charges"].numpy(), born, atol=1e-4)
    for potential in results["ensemble"].values():
        calculator = potential.get_calculator(device="cpu")
        config = calculator.models[0].config
        assert config.embed_charge and config.embed_spin and config.embed_field and config.field_dipole
        cation = with_info(frames[0], charge=1, spin=2)
        cation.calc = calculator
        assert cation.get_dipole_moment().shape == (3,)
        born = calculator.get_property("born_effective_charges", cation)
        assert np.abs(born.sum(axis=0) - np.eye(3)).max() < 1e-5, "the sum rule with Q = 1 (members in float32)"

