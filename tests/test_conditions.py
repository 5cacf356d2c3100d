"""Conditions as inputs: total charge, spin multiplicity, fidelity and an external electric field.

The model test suite (``MODEL_CASES``) runs a model with all of them at their neutral values; here
each one is set and shown to matter, the field to rotate with the structure, and the data paths
(graphs, frame stores, calculator) to carry them.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from ase import Atoms
from ase.io import read, write
from tace_aiida.model.calculator import TACECalculator
from tace_aiida.model.checkpoint import load_model, save_checkpoint
from tace_aiida.model.config import TrainingConfig
from tace_aiida.model.data import LabelKeys, atoms_to_graph, collate, frames_to_graphs
from tace_aiida.model.ensemble import StackedEnsemble
from tace_aiida.model.evaluation import evaluate
from tace_aiida.model.export import DeployedCalculator, export_model
from tace_aiida.model.exported_program import export_program
from tace_aiida.model.frames import read_columns, write_frames
from tace_aiida.model.graph_store import store_graphs
from tace_aiida.model.training import train

from .conftest import DATA, SPECIES_3BPA, default_dtype, periodic_cell, random_orthogonal, small_model

pytestmark = pytest.mark.usefixtures("one_thread")

SETTINGS = dict(max_edge_rank=2, correlation=2, max_hidden_rank=1, embed_charge=True, embed_spin=True,
                num_fidelities=2, embed_field=True)


def conditioned_model(seed: int = 1, **settings):
    with default_dtype(torch.float64):
        return small_model(seed=seed, scale=20.0, **(SETTINGS | settings))


def with_info(atoms: Atoms, **info) -> Atoms:
    atoms = atoms.copy()
    atoms.info.update(info)
    return atoms


def predict(model, atoms: Atoms):
    return model(collate([atoms_to_graph(atoms, SPECIES_3BPA, model.config.r_max, dtype=torch.float64)]))


@pytest.mark.parametrize(("entry", "value"), [("charge", 1.0), ("spin", 3.0), ("fidelity", 1),
                                              ("electric_field", np.array([0.0, 0.0, 0.5]))])
def test_each_condition_changes_the_prediction(frames_300K, entry, value):
    model = conditioned_model()
    neutral, changed = predict(model, frames_300K[0]), predict(model, with_info(frames_300K[0], **{entry: value}))
    assert abs(changed.energy.item() - neutral.energy.item()) > 1e-4
    assert (changed.forces - neutral.forces).abs().max() > 1e-4


def test_neutral_values_equal_no_conditions(frames_300K):
    """Charge 0, a singlet, fidelity 0 and no field are what a structure without those entries gets."""
    model = conditioned_model()
    stated = with_info(frames_300K[0], charge=0.0, spin=1, fidelity=0, electric_field=[0.0, 0.0, 0.0])
    assert predict(model, stated).energy.item() == predict(model, frames_300K[0]).energy.item()


@pytest.mark.parametrize("reflect", [False, True])
def test_equivariant_with_the_field_as_an_input(frames_300K, reflect):
    """Rotating (or reflecting) the structure and its field together: the same energy, rotated forces;
    rotating the field alone changes the energy."""
    model = conditioned_model()
    q = random_orthogonal(4, reflect)
    field = np.array([0.3, -0.2, 0.4])
    atoms = with_info(frames_300K[1], electric_field=field)
    moved = with_info(frames_300K[1], electric_field=q @ field)
    moved.positions = atoms.positions @ q.T + np.array([2.0, -1.0, 0.5])
    reference, transformed = predict(model, atoms), predict(model, moved)
    scale = max(1.0, reference.forces.abs().max().item())
    assert abs(transformed.energy.item() - reference.energy.item()) < 1e-10 * max(1.0, abs(reference.energy.item()))
    assert (transformed.forces - reference.forces @ torch.tensor(q.T)).abs().max() < 1e-10 * scale
    turned_field_only = predict(model, with_info(frames_300K[1], electric_field=q @ field))
    assert abs(turned_field_only.energy.item() - reference.energy.item()) > 1e-6


def test_latent_charges_sum_to_the_total_charge(frames_300K):
    model = conditioned_model(long_range=True)
    atoms = with_info(frames_300K[0], charge=-1.0)
    graph = collate([atoms_to_graph(atoms, SPECIES_3BPA, 5.0, dtype=torch.float64)])
    out = model(graph, compute_descriptors=True)
    charges = model.long_range.charges(out.node_features, graph["batch"], graph["total_charge"])
    assert abs(charges.sum().item() + 1.0) < 1e-12


@pytest.mark.parametrize(("entry", "value", "message"), [
    ("spin", 0, "spin multiplicity 2S\\+1 >= 1"), ("fidelity", 1.5, "integer >= 0"),
    ("electric_field", [1.0, 2.0], "3 finite numbers"), ("charge", float("nan"), "one finite number"),
])
def test_bad_conditions_are_named(frames_300K, entry, value, message):
    with pytest.raises(ValueError, match=f"info\\['{entry}'\\] must be .*{message}"):
        atoms_to_graph(with_info(frames_300K[0], **{entry: value}), SPECIES_3BPA, 5.0)


def test_a_fidelity_the_model_has_not_is_refused(frames_300K):
    with pytest.raises(ValueError, match="fidelity 2 is not one of the model's 2 levels"):
        predict(conditioned_model(), with_info(frames_300K[0], fidelity=2))


def test_frame_store_carries_the_conditions(tmp_path, frames_300K):
    frames = [with_info(frames_300K[0], charge=1.0, spin=2, fidelity=1, electric_field=[0.1, 0.0, -0.1]),
              frames_300K[1], with_info(frames_300K[2], spin=0)]
    write_frames(tmp_path / "frames.h5", frames[:2])
    expected = [atoms_to_graph(atoms, SPECIES_3BPA, 5.0, LabelKeys(), torch.float64) for atoms in frames[:2]]
    found = store_graphs(tmp_path / "frames.h5", read_columns(tmp_path / "frames.h5"), SPECIES_3BPA, 5.0, LabelKeys(),
                         torch.float64)
    for key in ("total_charge", "spin_multiplicity", "fidelity", "electric_field"):
        assert torch.equal(torch.cat([g[key] for g in found]), torch.cat([g[key] for g in expected])), key
    write_frames(tmp_path / "bad.h5", frames)
    with pytest.raises(ValueError, match="frame 2 .*info\\['spin'\\]"):
        store_graphs(tmp_path / "bad.h5", read_columns(tmp_path / "bad.h5"), SPECIES_3BPA, 5.0, LabelKeys(), torch.float64)


def test_ensemble_and_calculator_read_the_conditions(tmp_path, frames_300K):
    paths = [str(save_checkpoint(tmp_path / f"{seed}.pt", conditioned_model(seed))) for seed in (1, 2)]
    models = [load_model(path)[0] for path in paths]
    atoms = with_info(frames_300K[0], charge=1.0, spin=2, electric_field=[0.0, 0.2, 0.0])
    batch = collate([atoms_to_graph(atoms, SPECIES_3BPA, 5.0, dtype=torch.float64)])
    stacked = StackedEnsemble(models)(batch)
    for index, model in enumerate(models):
        assert (stacked.forces[index] - model(batch).forces).abs().max() < 1e-10
    atoms.calc = TACECalculator(paths, device="cpu")
    charged = atoms.get_potential_energy()
    assert charged == pytest.approx(stacked.energy[:, 0].mean().item(), abs=1e-10)
    atoms.info["charge"] = 0.0
    assert abs(atoms.get_potential_energy() - charged) > 1e-4, "a new charge must be a new calculation"


def test_an_ion_in_a_field_is_pushed_by_its_charge_times_the_field(frames_300K):
    """Translated by t, a structure of charge Q in a field F changes its energy by -Q F·t (1e-10) and its forces
    sum to Q F; a neutral one stays put."""
    model = conditioned_model()
    field, shift = np.array([0.1, -0.3, 0.2]), np.array([1.5, 0.5, -2.0])
    moved = frames_300K[0].copy()
    moved.positions += shift
    for charge in (0.0, -1.0, 2.0):
        here = predict(model, with_info(frames_300K[0], charge=charge, electric_field=field))
        there = predict(model, with_info(moved, charge=charge, electric_field=field))
        assert there.energy.item() - here.energy.item() == pytest.approx(-charge * field @ shift, abs=1e-10)
        assert np.allclose(here.forces.sum(0).detach().numpy(), charge * field, atol=1e-10)


def test_the_field_dipole_is_minus_the_field_derivative_of_the_energy(frames_300K):
    """``field_dipole``: dipole = -dE/dF by central differences of 1e-3 V/Å (1e-8 e Å, float64), for a neutral molecule and an ion;
    a stacked ensemble gives each member's; the setting needs embed_field and no dipole head."""
    model = conditioned_model(field_dipole=True)
    field = np.array([0.05, 0.1, -0.2])
    for charge in (0.0, 1.0):
        atoms = with_info(frames_300K[0], charge=charge, electric_field=field)
        dipole = predict(model, atoms).dipole[0].detach().numpy()
        for axis in range(3):
            step = np.eye(3)[axis] * 1e-3
            energies = [predict(model, with_info(atoms, electric_field=field + sign * step)).energy.item()
                        for sign in (1, -1)]
            assert dipole[axis] == pytest.approx(-(energies[0] - energies[1]) / 2e-3, abs=1e-8), (charge, axis)
    batch = collate([atoms_to_graph(with_info(frames_300K[1], electric_field=field), SPECIES_3BPA, 5.0,
                                    dtype=torch.float64)])
    members = [conditioned_model(seed, field_dipole=True) for seed in (1, 2)]
    stacked = StackedEnsemble(members)(batch)
    for index, member in enumerate(members):
        assert (stacked.dipole[index] - member(batch).dipole).abs().max() < 1e-10
    for settings in ({"embed_field": False}, {"dipole": True}):
        with pytest.raises(ValueError, match="field_dipole: true takes the dipole as -dE/dF"):
            conditioned_model(field_dipole=True, **settings)


def test_polarizability_and_born_charges_are_second_field_derivatives(tmp_path, frames_300K):
    """``field_dipole`` with ``compute_field_response``: the polarizability is d mu/dF (central differences,
    symmetric), the Born charges d F/dE = d mu/dR (central differences), they sum to Q I over the atoms, and
    the calculator gives both on request."""
    from tace_aiida.model.conditions import COULOMB

    model = conditioned_model(field_dipole=True)
    field = np.array([0.05, 0.1, -0.2])
    atoms = with_info(frames_300K[0], charge=1.0, electric_field=field)

    def run(structure: Atoms, response: bool = False):
        graph = atoms_to_graph(structure, SPECIES_3BPA, 5.0, dtype=torch.float64)
        return model(collate([graph]), compute_field_response=response)

    out = run(atoms, response=True)
    alpha, born = out.polarizability[0].detach().numpy(), out.born_charges.detach().numpy()
    assert np.abs(alpha - alpha.T).max() < 1e-10 and np.abs(alpha).max() > 1e-3
    step = 1e-3
    for j in range(3):
        shifted = [run(with_info(atoms, electric_field=field + sign * step * np.eye(3)[j])) for sign in (1, -1)]
        d_dipole = (shifted[0].dipole - shifted[1].dipole)[0].detach().numpy() / (2 * step)
        d_forces = (shifted[0].forces - shifted[1].forces).detach().numpy() / (2 * step)
        assert np.abs(alpha[:, j] - COULOMB * d_dipole).max() < 1e-7, j
        assert np.abs(born[:, j, :] - d_forces).max() < 1e-7, j
    for atom, k in ((0, 0), (5, 2)):
        moved = [atoms.copy() for _ in range(2)]
        moved[0].positions[atom, k] += step / 10
        moved[1].positions[atom, k] -= step / 10
        d_dipole = (run(moved[0]).dipole - run(moved[1]).dipole)[0].detach().numpy() / (2 * step / 10)
        assert np.abs(born[atom, :, k] - d_dipole).max() < 1e-7
    assert np.abs(born.sum(axis=0) - np.eye(3)).max() < 1e-10, "the acoustic sum rule with Q = 1"

    path = save_checkpoint(tmp_path / "field.pt", model)
    atoms.calc = TACECalculator([path], device="cpu")
    atoms.get_forces()
    assert "born_effective_charges" not in atoms.calc.results, "computed only when asked for"
    assert np.abs(atoms.calc.get_property("born_effective_charges", atoms) - born).max() < 1e-10
    assert np.abs(atoms.calc.get_property("polarizability", atoms) - alpha).max() < 1e-10


@pytest.mark.parametrize("filename", ["model.ts", "model.pt2"])
def test_an_exported_file_takes_the_conditions_and_equals_the_model(tmp_path, frames_300K, filename):
    """Energy, forces and stress of the TorchScript and torch.export files equal the Python model's (1e-10, float64)
    at conditions other than the ones it was traced at."""
    model = conditioned_model()
    export = export_program if filename.endswith(".pt2") else export_model
    calculator = DeployedCalculator(export(model, tmp_path / filename))
    cell = periodic_cell(seed=3)
    cases = [with_info(frames_300K[2], charge=-1.0, spin=3.0, fidelity=1, electric_field=[0.3, 0.0, -0.1]),
             frames_300K[2], with_info(cell, fidelity=1, electric_field=[0.0, 0.2, 0.0])]
    energies = []
    for atoms in cases:
        expected = model(collate([atoms_to_graph(atoms, SPECIES_3BPA, 5.0, dtype=torch.float64)]),
                         compute_stress=bool(atoms.pbc.all()))
        atoms = atoms.copy()
        atoms.calc = calculator
        energies.append(atoms.get_potential_energy())
        assert energies[-1] == pytest.approx(expected.energy.item(), abs=1e-10)
        assert np.abs(atoms.get_forces() - expected.forces.detach().numpy()).max() < 1e-10
        if atoms.pbc.all():
            assert np.abs(atoms.get_stress(voigt=False) - expected.stress[0].detach().numpy()).max() < 1e-10
    assert abs(energies[0] - energies[1]) > 1e-3


def test_an_exported_field_dipole_file_gives_the_dipole_polarizability_and_born_charges(tmp_path, frames_300K):
    """A ``field_dipole`` model's file: dipole -dE/dF always, polarizability and Born charges when asked for, equal
    to the Python model's (1e-10, float64) for an ion in a field and a periodic cell (Born charges only there),
    and through the module directly for two structures in one batch."""
    model = conditioned_model(field_dipole=True)
    path = export_model(model, tmp_path / "field.ts")
    calculator = DeployedCalculator(path)
    ion = with_info(frames_300K[1], charge=1.0, electric_field=[0.1, -0.3, 0.2])
    cell = with_info(periodic_cell(seed=3), electric_field=[0.0, 0.2, 0.1])
    for atoms in (ion, cell):
        expected = model(collate([atoms_to_graph(atoms, SPECIES_3BPA, 5.0, dtype=torch.float64)]),
                         compute_stress=bool(atoms.pbc.all()), compute_field_response=True)
        atoms = atoms.copy()
        atoms.calc = calculator
        atoms.get_forces()
        assert "born_effective_charges" not in atoms.calc.results, "computed only when asked for"
        born = atoms.calc.get_property("born_effective_charges", atoms)
        assert np.abs(born - expected.born_charges.detach().numpy()).max() < 1e-10
        assert np.abs(born).max() > 1e-3
        if not atoms.pbc.any():
            assert np.abs(atoms.get_dipole_moment() - expected.dipole[0].detach().numpy()).max() < 1e-10
            alpha = atoms.calc.get_property("polarizability", atoms)
            assert np.abs(alpha - expected.polarizability[0].detach().numpy()).max() < 1e-10
    module = torch.jit.load(str(path))
    batch = collate([atoms_to_graph(atoms, SPECIES_3BPA, 5.0, dtype=torch.float64) for atoms in (ion, frames_300K[2])])
    expected = model(batch, compute_field_response=True)
    out = module(batch["positions"], batch["cell"], batch["species"], batch["edge_index"], batch["shifts"], batch["batch"],
                 False, batch["total_charge"], batch["spin_multiplicity"], batch["fidelity"], batch["electric_field"], True)
    for name in ("energy", "forces", "dipole", "polarizability", "born_charges"):
        assert (out[name] - getattr(expected, name)).abs().max() < 1e-10, name


def test_a_torch_export_file_of_a_field_dipole_model_gives_its_dipole(tmp_path, frames_300K):
    """The .pt2 file of a ``field_dipole`` model: energy, forces, stress and the dipole -dE/dF equal the Python
    model's (1e-10, float64) for an ion in a field and a periodic cell; the second derivatives it does not hold
    are refused with the way to get them."""
    model = conditioned_model(field_dipole=True)
    calculator = DeployedCalculator(export_program(model, tmp_path / "field.pt2"))
    ion = with_info(frames_300K[1], charge=1.0, electric_field=[0.1, -0.3, 0.2])
    cell = with_info(periodic_cell(seed=3), electric_field=[0.0, 0.2, 0.1])
    for atoms in (ion, cell):
        periodic = bool(atoms.pbc.all())
        expected = model(collate([atoms_to_graph(atoms, SPECIES_3BPA, 5.0, dtype=torch.float64)]), compute_stress=periodic)
        atoms = atoms.copy()
        atoms.calc = calculator
        assert atoms.get_potential_energy() == pytest.approx(expected.energy.item(), abs=1e-10)
        assert np.abs(atoms.get_forces() - expected.forces.detach().numpy()).max() < 1e-10
        if periodic:
            assert np.abs(atoms.get_stress(voigt=False) - expected.stress[0].detach().numpy()).max() < 1e-10
        else:
            assert np.abs(atoms.get_dipole_moment() - expected.dipole[0].detach().numpy()).max() < 1e-10
            assert np.abs(expected.dipole.detach().numpy()).max() > 1e-3
    with pytest.raises(ValueError, match=r"export the model as TorchScript \(\.ts\)"):
        calculator.get_property("born_effective_charges", atoms)


@pytest.mark.slow
def test_charge_and_spin_tell_apart_states_at_the_same_geometry(tmp_path):
    """PySCF energies of O2 in four charge/spin states and of H2O in fields (tests/data/pyscf_conditions.xyz):
    with the conditions embedded the test error is a fraction of that without, which can only average
    over the states (about 5 eV apart)."""
    frames = read(DATA / "pyscf_conditions.xyz", ":")
    order = np.random.default_rng(0).permutation(len(frames))
    write(tmp_path / "train.xyz", [frames[i] for i in order[:100]])
    test = [frames[i] for i in order[100:]]
    errors = {}
    for conditioned in (False, True):
        extra = {"embed_charge": True, "embed_spin": True, "embed_field": True} if conditioned else {}
        config = TrainingConfig.from_dict(
            {"train_file": "train.xyz", "valid_fraction": 0.1, "forces_weight": 0.0, "max_epochs": 60,
             "model": {"channels": 8, "radial_mlp": [16, 16], "max_edge_rank": 2, "correlation": 2, **extra},
             "batch_size": 5, "output_dir": f"run_{conditioned}", "progress_bar": False},
            base_dir=tmp_path,
        )
        model, _ = load_model(train(config)["checkpoint"])
        graphs = frames_to_graphs(test, "test", model.config.atomic_numbers, 5.0, LabelKeys(), torch.float64)
        errors[conditioned] = evaluate(model, graphs)["energy_rmse"]
    assert errors[False] > 1.0, errors
    assert errors[True] < 0.25 * errors[False], errors
