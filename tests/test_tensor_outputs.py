"""Dipole and polarizability heads: labels in, outputs out, ensembles, calculator, training.

Their rotation as tensors of rank 1 and 2 is checked by the model test suite (``MODEL_CASES``).
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from ase import Atoms
from ase.io import read, write
from tace_aiida.model.calculator import TACECalculator
from tace_aiida.model.checkpoint import load_model, save_checkpoint
from tace_aiida.model.cli import eval_main
from tace_aiida.model.config import TrainingConfig
from tace_aiida.model.data import LabelKeys, atoms_to_graph, collate
from tace_aiida.model.ensemble import StackedEnsemble
from tace_aiida.model.export import DeployedCalculator, export_model
from tace_aiida.model.exported_program import export_program
from tace_aiida.model.frames import read_columns, read_frames, write_frames
from tace_aiida.model.graph_store import store_graphs
from tace_aiida.model.training import train

from .conftest import DATA, SPECIES_3BPA, default_dtype, periodic_cell, random_orthogonal, small_model

pytestmark = pytest.mark.usefixtures("one_thread")

#: PBE/def2-SVP labels of displaced H2O, NH3, CH4, H2CO, CH3OH (benchmarks/pyscf_tensor_dataset.py).
PYSCF_TENSORS = DATA / "pyscf_tensors.xyz"
#: PBE/def2-SVP labels of H2O and NH3 in fields, with polarizabilities and Born charges (benchmarks/pyscf_field_dataset.py).
PYSCF_FIELD = DATA / "pyscf_field.xyz"
#: Born-charge test error with labels / without, at most (measured 0.19: 0.012 against 0.065 e).
BORN_GAIN = 0.5


def tensor_model(seed: int = 1, **settings):
    with default_dtype(torch.float64):
        return small_model(seed=seed, max_hidden_rank=1, dipole=True, polarizability=True, **settings)


def labelled_water(dipole=(0.1, -0.2, 0.3), polarizability=None) -> Atoms:
    atoms = Atoms("OH2", positions=[[0, 0, 0], [0.96, 0, 0], [-0.24, 0.93, 0]])
    atoms.info["dipole"] = np.array(dipole)
    atoms.info["polarizability"] = np.arange(9.0) if polarizability is None else polarizability
    return atoms


def test_labels_are_read_for_molecules_only():
    graph = atoms_to_graph(labelled_water(), SPECIES_3BPA, 5.0, LabelKeys(), torch.float64)
    assert graph["dipole"].tolist() == [[0.1, -0.2, 0.3]] and bool(graph["has_dipole"])
    assert graph["polarizability"][0].tolist() == np.arange(9.0).reshape(3, 3).tolist()
    cell = periodic_cell(seed=1)
    cell.info["dipole"] = np.ones(3)
    graph = atoms_to_graph(cell, SPECIES_3BPA, 5.0, LabelKeys(), torch.float64)
    assert not bool(graph["has_dipole"]) and graph["dipole"].abs().max() == 0


def test_born_charges_are_read_per_atom_for_molecules_and_cells():
    """9 values per atom (row-major ``Z[j, k]``) or 3 x 3; a periodic cell's too, since they are derivatives."""
    water = labelled_water()
    born = np.arange(27.0).reshape(3, 3, 3)
    water.new_array("born_effective_charges", born.reshape(3, 9))
    graph = atoms_to_graph(water, SPECIES_3BPA, 5.0, LabelKeys(), torch.float64)
    assert graph["born_charges"].numpy().tolist() == born.tolist() and bool(graph["has_born_charges"])
    cell = periodic_cell(seed=1)
    cell.new_array("born_effective_charges", np.ones((len(cell), 9)))
    assert bool(atoms_to_graph(cell, SPECIES_3BPA, 5.0, LabelKeys(), torch.float64)["has_born_charges"])
    graph = atoms_to_graph(periodic_cell(seed=1), SPECIES_3BPA, 5.0, LabelKeys(), torch.float64)
    assert not bool(graph["has_born_charges"]) and "born_charges" not in graph, "no 9 zeros per atom stored"
    water.arrays["born_effective_charges"][1, 4] = np.nan
    with pytest.raises(ValueError, match="'born_effective_charges' label is not finite at atom 1"):
        atoms_to_graph(water, SPECIES_3BPA, 5.0, LabelKeys())


def test_a_batch_of_graphs_with_and_without_born_charges_fills_zeros_where_absent():
    """Only labelled graphs store Born charges; a mixed batch has each graph's rows in place, zeros (masked) elsewhere."""
    labelled = labelled_water()
    labelled.new_array("born_effective_charges", np.arange(1.0, 28.0).reshape(3, 9))
    cell = periodic_cell(seed=1, n_atoms=6)
    graphs = [atoms_to_graph(atoms, SPECIES_3BPA, 5.0, LabelKeys(), torch.float64)
              for atoms in (cell, labelled, labelled_water())]
    batch = collate(graphs)
    assert batch["born_charges"].shape == (12, 3, 3)
    assert batch["born_charges"][:6].abs().max() == 0 and batch["born_charges"][9:].abs().max() == 0
    assert batch["born_charges"][6:9].reshape(3, 9).tolist() == np.arange(1.0, 28.0).reshape(3, 9).tolist()
    assert batch["has_born_charges"].tolist() == [0.0, 1.0, 0.0]
    assert "born_charges" not in collate([graphs[0], graphs[2]])


def test_born_charge_labels_of_periodic_cells_enter_the_loss_of_a_field_dipole_model(tmp_path):
    """A field_dipole model trains on crystals' Born charges (a crystal has them, though not a dipole): the loss
    moves them, and the validation metrics report them; the cells' Born charges sum to zero over the atoms."""
    from tace_aiida.model.training import field_response_labelled, loss_function

    frames = []
    for seed in range(6):
        cell = periodic_cell(seed=seed, n_atoms=6)
        born = np.random.default_rng(seed).normal(size=(6, 3, 3))
        cell.new_array("born_effective_charges", (born - born.mean(axis=0)).reshape(6, 9))
        cell.info["energy"] = -float(seed)
        frames.append(cell)
    config = TrainingConfig.from_dict({"train_file": "train.xyz", "model": {"embed_field": True, "field_dipole": True},
                                       "forces_weight": 0.0, "stress_weight": 0.0, "max_epochs": 2, "batch_size": 3,
                                       "output_dir": "out", "progress_bar": False}, base_dir=tmp_path)
    graphs = [atoms_to_graph(atoms, SPECIES_3BPA, 5.0, LabelKeys(), torch.float64) for atoms in frames]
    assert field_response_labelled(graphs, config)
    with default_dtype(torch.float64):
        model = small_model(seed=1, embed_field=True, field_dipole=True)
    out = model(collate(graphs), training=True, compute_field_response=True)
    assert torch.allclose(out.born_charges.sum(dim=0), torch.zeros(3, 3, dtype=torch.float64), atol=1e-10)
    with_born = loss_function(out, collate(graphs), config)
    config.born_charges_weight = 0.0
    assert float(with_born - loss_function(out, collate(graphs), config)) > 0.1
    write(tmp_path / "train.xyz", frames)
    config.born_charges_weight = 1.0
    assert "valid_born_charges_rmse" in train(config)["best"]


def test_a_misshapen_label_is_named():
    with pytest.raises(ValueError, match="'polarizability' label has shape \\(4,\\)"):
        atoms_to_graph(labelled_water(polarizability=np.ones(4)), SPECIES_3BPA, 5.0, LabelKeys())


def test_frame_store_keeps_tensor_labels(tmp_path):
    """Labels written to an HDF5 frame store (a dipole from an extxyz calculator result, too) give the same graphs."""
    frames = [labelled_water(), labelled_water(dipole=(1.0, 2.0, 3.0)), periodic_cell(seed=2)]
    frames[1].new_array("born_effective_charges", np.arange(27.0).reshape(3, 9))
    frames[2].new_array("born_effective_charges", -np.ones((len(frames[2]), 9)))
    write(tmp_path / "frames.xyz", frames)
    frames = read(tmp_path / "frames.xyz", ":")
    assert "dipole" not in frames[0].info, "ASE's reader moves the dipole into the calculator's results"
    write_frames(tmp_path / "frames.h5", frames)
    expected = [atoms_to_graph(atoms, SPECIES_3BPA, 5.0, LabelKeys(), torch.float64) for atoms in frames]
    found = store_graphs(tmp_path / "frames.h5", read_columns(tmp_path / "frames.h5"), SPECIES_3BPA, 5.0, LabelKeys(),
                         torch.float64)
    for name in ("dipole", "polarizability", "has_dipole", "has_polarizability", "has_born_charges"):
        assert torch.equal(torch.cat([g[name] for g in found]), torch.cat([g[name] for g in expected])), name
    assert [sorted(g) for g in found] == [sorted(g) for g in expected]
    assert torch.equal(collate(found)["born_charges"], collate(expected)["born_charges"])
    assert [bool(g["has_dipole"]) for g in found] == [True, True, False]
    assert [bool(g["has_born_charges"]) for g in found] == [False, True, True]
    assert found[1]["born_charges"][2, 1, 0] == 21.0
    assert read_frames(tmp_path / "frames.h5")[1].info["dipole"].tolist() == [1.0, 2.0, 3.0]


def test_far_apart_copies_add_their_dipoles_and_polarizabilities(frames_300K):
    model = tensor_model()
    atoms = frames_300K[3]
    far = atoms.copy()
    far.positions += np.array([40.0, 0.0, 0.0])
    single, pair = (model(collate([atoms_to_graph(a, SPECIES_3BPA, 5.0, dtype=torch.float64)])) for a in (atoms, atoms + far))
    assert single.dipole.abs().max() > 1e-2
    assert torch.allclose(pair.dipole, 2 * single.dipole, atol=1e-10)
    assert torch.allclose(pair.polarizability, 2 * single.polarizability, atol=1e-10)


def test_an_ions_dipole_is_about_the_origin_as_electronic_structure_codes_give_it(frames_300K):
    """Translated by t, a structure of total charge Q changes its dipole by Q t (1e-10); rotated about the
    origin, it rotates with it; the polarizability and a neutral structure's dipole do not move."""
    model = tensor_model(embed_charge=True)
    shift = np.array([0.7, -1.3, 2.1])

    def outputs(atoms: Atoms, charge: float):
        atoms = atoms.copy()
        atoms.info["charge"] = charge
        return model(collate([atoms_to_graph(atoms, SPECIES_3BPA, 5.0, dtype=torch.float64)]))

    atoms = frames_300K[3]
    moved = atoms.copy()
    moved.positions += shift
    for charge in (0.0, -1.0, 2.0):
        here, there = outputs(atoms, charge), outputs(moved, charge)
        expected = here.dipole + charge * torch.tensor(shift)
        assert (there.dipole - expected).abs().max() < 1e-10, charge
        assert (there.polarizability - here.polarizability).abs().max() < 1e-10
    matrix = random_orthogonal(seed=5, reflect=False)
    rotation = torch.as_tensor(matrix, dtype=torch.float64)
    turned = atoms.copy()
    turned.positions = atoms.positions @ matrix.T
    assert (outputs(turned, -1.0).dipole - outputs(atoms, -1.0).dipole @ rotation.T).abs().max() < 1e-10


def test_stacked_ensemble_and_calculator_give_the_members_tensors(tmp_path, frames_300K):
    paths = [str(save_checkpoint(tmp_path / f"{seed}.pt", tensor_model(seed))) for seed in (1, 2)]
    models = [load_model(path)[0] for path in paths]
    batch = collate([atoms_to_graph(frames_300K[0], SPECIES_3BPA, 5.0, dtype=torch.float64)])
    stacked = StackedEnsemble(models)(batch)
    for index, model in enumerate(models):
        single = model(batch)
        assert (stacked.dipole[index] - single.dipole).abs().max() < 1e-10
        assert (stacked.polarizability[index] - single.polarizability).abs().max() < 1e-10
    results = {}
    for batched in (True, False):
        atoms = frames_300K[0].copy()
        atoms.calc = TACECalculator(paths, device="cpu", batched=batched)
        results[batched] = (atoms.get_dipole_moment(), atoms.calc.results["polarizability"])
    mean_dipole = torch.stack([m(batch).dipole[0] for m in models]).mean(0).detach().numpy()
    assert np.abs(results[True][0] - mean_dipole).max() < 1e-10
    assert np.abs(results[True][0] - results[False][0]).max() < 1e-10
    assert np.abs(results[True][1] - results[False][1]).max() < 1e-10
    cell = periodic_cell(seed=1)
    cell.calc = TACECalculator(paths, device="cpu")
    cell.get_potential_energy()
    assert "dipole" not in cell.calc.results, "a periodic cell's dipole is not defined by this head"


def test_an_exported_file_gives_the_heads_dipole_and_polarizability(tmp_path, frames_300K):
    """The TorchScript file of a model with both heads equals the Python model (1e-10, float64) for an ion, and for
    two molecules in one batch; a periodic cell gets energy and stress but no dipole."""
    model = tensor_model(embed_charge=True)
    path = export_model(model, tmp_path / "heads.ts")
    ion = frames_300K[4].copy()
    ion.info["charge"] = -1.0
    expected = model(collate([atoms_to_graph(ion, SPECIES_3BPA, 5.0, dtype=torch.float64)]))
    ion.calc = DeployedCalculator(path)
    assert np.abs(ion.get_dipole_moment() - expected.dipole[0].detach().numpy()).max() < 1e-10
    assert np.abs(ion.calc.results["polarizability"] - expected.polarizability[0].detach().numpy()).max() < 1e-10
    assert np.abs(expected.dipole.detach().numpy()).max() > 1e-2
    module = torch.jit.load(str(path))
    batch = collate([atoms_to_graph(atoms, SPECIES_3BPA, 5.0, dtype=torch.float64) for atoms in frames_300K[:2]])
    expected = model(batch)
    out = module(batch["positions"], batch["cell"], batch["species"], batch["edge_index"], batch["shifts"], batch["batch"],
                 False)
    for name in ("energy", "forces", "dipole", "polarizability"):
        assert (out[name] - getattr(expected, name)).abs().max() < 1e-10, name
    cell = periodic_cell(seed=1)
    cell.calc = DeployedCalculator(path)
    cell.get_stress()
    assert "dipole" not in cell.calc.results


def test_a_torch_export_file_gives_the_heads_dipole_and_polarizability(tmp_path, frames_300K):
    model = tensor_model(embed_charge=True)
    ion = frames_300K[4].copy()
    ion.info["charge"] = -1.0
    expected = model(collate([atoms_to_graph(ion, SPECIES_3BPA, 5.0, dtype=torch.float64)]))
    ion.calc = DeployedCalculator(export_program(model, tmp_path / "heads.pt2"))
    assert np.abs(ion.get_dipole_moment() - expected.dipole[0].detach().numpy()).max() < 1e-10
    assert np.abs(ion.calc.results["polarizability"] - expected.polarizability[0].detach().numpy()).max() < 1e-10
    assert np.abs(ion.get_forces() - expected.forces.detach().numpy()).max() < 1e-10
    assert np.abs(expected.dipole.detach().numpy()).max() > 1e-2


def test_training_refuses_a_head_without_labels(tmp_path):
    shutil.copy(DATA / "3bpa_300K_40.xyz", tmp_path / "train.xyz")
    config = TrainingConfig.from_dict({"train_file": "train.xyz", "model": {"dipole": True}, "max_epochs": 1,
                                       "output_dir": "out", "progress_bar": False}, base_dir=tmp_path)
    with pytest.raises(ValueError, match="dipole: true, but no molecule has a dipole label under 'dipole'"):
        train(config)


def train_on_pyscf_tensors(folder, model: dict) -> tuple[dict, dict[str, float]]:
    """Train ``model`` (40 epochs) on the first 60 PySCF frames, test on the rest: (training summary, RMSE of
    predicting the training mean for ``dipole`` and ``polarizability``)."""
    frames = read(PYSCF_TENSORS, ":")
    write(folder / "train.xyz", frames[:60])
    write(folder / "test.xyz", frames[60:])
    config = TrainingConfig.from_dict(
        {"train_file": "train.xyz", "test_file": "test.xyz", "valid_fraction": 0.1,
         "model": {"channels": 16, "radial_mlp": [32, 32], "max_edge_rank": 2, "correlation": 2, **model},
         "forces_weight": 10.0, "dipole_weight": 100.0, "polarizability_weight": 10.0,
         "max_epochs": 40, "batch_size": 5, "output_dir": "out", "progress_bar": False},
        base_dir=folder,
    )
    dipoles = np.array([atoms.get_dipole_moment() for atoms in frames])
    alphas = np.array([np.reshape(atoms.info["polarizability"], (3, 3)) for atoms in frames])
    baselines = {name: float(np.sqrt(((values[60:] - values[:60].mean(0)) ** 2).mean()))
                 for name, values in (("dipole", dipoles), ("polarizability", alphas))}
    return train(config), baselines


@pytest.mark.slow
def test_training_on_pyscf_labels_learns_dipoles_and_polarizabilities(tmp_path, capsys):
    """60 PySCF frames, 40 epochs: test errors well below those of predicting the training mean."""
    summary, baselines = train_on_pyscf_tensors(tmp_path, {"dipole": True, "polarizability": True})
    test = summary["test"]
    for name, baseline in baselines.items():
        assert test[f"{name}_rmse"] < 0.5 * baseline, (name, test[f"{name}_rmse"], baseline)
    assert eval_main(["--checkpoint", summary["checkpoint"], "--data", str(tmp_path / "test.xyz"), "--json"]) == 0
    printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert printed["dipole_rmse"] == pytest.approx(test["dipole_rmse"])


@pytest.mark.slow
def test_a_field_dipole_model_learns_polarizabilities_as_a_second_field_derivative(tmp_path):
    """``field_dipole`` trained on the same PySCF frames: the dipole (-dE/dF) and the polarizability (d mu/dF,
    with polarizability labels in the loss) end well below predicting the training mean."""
    summary, baselines = train_on_pyscf_tensors(tmp_path, {"embed_field": True, "field_dipole": True})
    for name, baseline in baselines.items():
        assert summary["test"][f"{name}_rmse"] < 0.5 * baseline, (name, summary["test"][f"{name}_rmse"], baseline)


@pytest.mark.slow
def test_born_charge_labels_train_a_field_dipole_model(tmp_path, capsys):
    """H2O and NH3 in fields, 60 frames, 40 epochs, the same seed: with Born-charge labels in the loss the test
    Born-charge error is well below that of the same model trained without them; tace-eval reports it."""
    frames = read(PYSCF_FIELD, ":")
    write(tmp_path / "train.xyz", frames[:60])
    write(tmp_path / "test.xyz", frames[60:])
    errors = {}
    for weight in (0.0, 100.0):
        config = TrainingConfig.from_dict(
            {"train_file": "train.xyz", "test_file": "test.xyz", "valid_fraction": 0.1,
             "model": {"channels": 16, "radial_mlp": [32, 32], "max_edge_rank": 2, "correlation": 2, "embed_field": True,
                       "field_dipole": True},
             "forces_weight": 10.0, "dipole_weight": 100.0, "polarizability_weight": 0.0, "born_charges_weight": weight,
             "max_epochs": 40, "batch_size": 5, "output_dir": f"out_{weight}", "progress_bar": False},
            base_dir=tmp_path,
        )
        summary = train(config)
        errors[weight] = summary["test"]["born_charges_rmse"]
    assert errors[100.0] < BORN_GAIN * errors[0.0], errors
    assert eval_main(["--checkpoint", summary["checkpoint"], "--data", str(tmp_path / "test.xyz"), "--json"]) == 0
    printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert printed["born_charges_rmse"] == pytest.approx(errors[100.0])
