"""The long-range term: Ewald sums against known results, the 1/r tail, ensembles, configuration.

The symmetry and derivative tests of models with ``long_range: true`` run in the model test suite
(``MODEL_CASES`` in tests/conftest.py).
"""

from __future__ import annotations

import math
import subprocess
import sys

import numpy as np
import pytest
import torch
from ase import Atoms
from ase.build import bulk
from ase.io import write
from tace_aiida.model.checkpoint import load_model, save_checkpoint
from tace_aiida.model.config import TrainingConfig
from tace_aiida.model.data import atoms_to_graph, collate
from tace_aiida.model.ensemble import StackedEnsemble
from tace_aiida.model.export import DeployedCalculator, export_model
from tace_aiida.model.exported_program import export_program
from tace_aiida.model.long_range import COULOMB_CONSTANT, direct_potential, reciprocal_potential
from tace_aiida.model.training import train

from .conftest import SPECIES_3BPA, ModelCase, periodic_cell

pytestmark = pytest.mark.usefixtures("one_thread")

#: Madelung constant of rock salt, referred to the nearest-neighbour distance.
MADELUNG_ROCK_SALT = 1.747564594633


def ewald_energy(atoms: Atoms, charges: np.ndarray, sigma: float, spacing: float) -> tuple[float, np.ndarray]:
    """Energy (eV) and forces ``[n, 3]`` (eV/Å) of fixed ``charges`` (e) in a periodic cell."""
    positions = torch.tensor(atoms.positions, dtype=torch.float64, requires_grad=True)
    q = torch.tensor(charges, dtype=torch.float64)
    cell = torch.tensor(atoms.cell[:], dtype=torch.float64)
    energy = 0.5 * (q * reciprocal_potential(positions, q, cell, sigma, 2 * math.pi / spacing)).sum()
    (gradient,) = torch.autograd.grad(energy, positions)
    return energy.item(), -gradient.numpy()


def rock_salt_charges(atoms: Atoms) -> np.ndarray:
    return np.where(atoms.numbers == 11, 1.0, -1.0)


def test_rock_salt_energy_is_the_madelung_energy():
    """Narrow charges (sigma 0.2 Å, no overlap at 2.82 Å) reproduce point charges: -k_e M / r0 per ion pair."""
    a = 5.64
    atoms = bulk("NaCl", "rocksalt", a=a, cubic=True)
    energy, forces = ewald_energy(atoms, rock_salt_charges(atoms), sigma=0.2, spacing=0.15)
    expected = -COULOMB_CONSTANT * MADELUNG_ROCK_SALT / (a / 2)
    assert abs(energy / 4 - expected) < 1e-9 * abs(expected)
    assert np.abs(forces).max() < 1e-9


def test_ewald_matches_pymatgen_on_a_rattled_strained_cell():
    """Energy and forces of a distorted 16-atom NaCl cell against pymatgen's point-charge Ewald sum."""
    from pymatgen.analysis.ewald import EwaldSummation
    from pymatgen.io.ase import AseAtomsAdaptor

    atoms = bulk("NaCl", "rocksalt", a=5.64, cubic=True) * (1, 1, 2)
    atoms.rattle(0.1, seed=1)
    strain = np.eye(3) + 0.03 * np.random.default_rng(0).normal(size=(3, 3))
    atoms.set_cell(atoms.cell[:] @ strain, scale_atoms=True)
    charges = rock_salt_charges(atoms)
    structure = AseAtomsAdaptor.get_structure(atoms)
    structure.add_oxidation_state_by_site(charges.tolist())
    reference = EwaldSummation(structure, acc_factor=12.0, compute_forces=True)
    energy, forces = ewald_energy(atoms, charges, sigma=0.2, spacing=0.2)
    assert abs(energy - reference.total_energy) < 1e-7 * abs(reference.total_energy)
    assert np.abs(forces - reference.forces).max() < 1e-6
    assert np.abs(reference.forces).max() > 0.1


def test_periodic_sum_of_a_molecule_in_a_large_box_is_its_direct_sum():
    """One convention for both: a neutral, dipole-free molecule far from its images has the same energy."""
    positions = np.array([[-1.5, 0.0, 0.0], [0.0, 0.0, 0.0], [1.5, 0.0, 0.0]])
    charges = torch.tensor([1.0, -2.0, 1.0], dtype=torch.float64)
    direct = 0.5 * (charges * direct_potential(torch.tensor(positions), charges, sigma=1.0)).sum().item()
    box = Atoms("NaClNa", positions=positions + 10.0, cell=[20.0, 20.0, 20.0], pbc=True)
    periodic, _ = ewald_energy(box, charges.numpy(), sigma=1.0, spacing=0.5)
    assert abs(periodic - direct) < 1e-3 * abs(direct)


def test_direct_sum_is_screened_coulomb():
    """Two Gaussian charges interact through k_e q1 q2 erf(r / (sqrt(2) sigma)) / r: finite at contact, 1/r far away."""
    charges = torch.tensor([0.7, -0.4], dtype=torch.float64)
    for distance in (0.3, 2.0, 15.0):
        positions = torch.tensor([[0.0, 0.0, 0.0], [0.0, distance, 0.0]], dtype=torch.float64)
        energy = 0.5 * (charges * direct_potential(positions, charges, sigma=1.0)).sum().item()
        expected = COULOMB_CONSTANT * -0.28 * math.erf(distance / math.sqrt(2.0)) / distance
        assert abs(energy - expected) < 1e-12
    assert abs(expected - COULOMB_CONSTANT * -0.28 / 15.0) < 1e-12


def long_range_model(seed: int = 3):
    return ModelCase((("max_edge_rank", 2), ("correlation", 2), ("long_range", True), ("r_max", 4.0))).build(seed)


def test_model_energy_beyond_the_cutoff_is_the_coulomb_tail():
    """A C-N pair beyond r_max: the short-range part is constant, the rest is the pair's screened Coulomb energy."""
    model = long_range_model()
    energies, charges = [], []
    for distance in (6.0, 9.0, 14.0):
        batch = collate([atoms_to_graph(Atoms("CN", positions=[[0, 0, 0], [distance, 0, 0]]), SPECIES_3BPA, 4.0, dtype=torch.float64)])
        out = model(batch, compute_forces=False, compute_descriptors=True)
        q = model.long_range.charges(out.node_features, batch["batch"], torch.zeros(1, dtype=torch.float64))
        energies.append(out.energy.item())
        charges.append(q.detach())
    assert all(torch.allclose(q, charges[0], atol=1e-12) for q in charges), "an isolated atom's charge cannot depend on r"
    q_c, q_n = charges[0].tolist()
    assert abs(q_c + q_n) < 1e-12 and abs(q_c) > 0.01

    def coulomb(r: float) -> float:
        return COULOMB_CONSTANT * q_c * q_n * math.erf(r / math.sqrt(2.0)) / r

    assert abs((energies[1] - energies[0]) - (coulomb(9.0) - coulomb(6.0))) < 1e-10
    assert abs((energies[2] - energies[0]) - (coulomb(14.0) - coulomb(6.0))) < 1e-10


def test_stacked_ensemble_of_long_range_models_equals_its_members(tmp_path, frames_300K):
    models = [long_range_model(seed) for seed in (1, 2)]
    ensemble = StackedEnsemble([load_model(save_checkpoint(tmp_path / f"{i}.pt", m))[0] for i, m in enumerate(models)])
    structures = [frames_300K[0], periodic_cell(seed=1)]
    batch = collate([atoms_to_graph(atoms, SPECIES_3BPA, 4.0, dtype=torch.float64) for atoms in structures])
    stacked = ensemble(batch)
    for index, model in enumerate(models):
        single = model(batch)
        assert (stacked.energy[index] - single.energy).abs().max() < 1e-10
        assert (stacked.forces[index] - single.forces).abs().max() < 1e-10


def test_checkpoint_keeps_the_term(tmp_path):
    model = long_range_model()
    loaded, _ = load_model(save_checkpoint(tmp_path / "lr.pt", model))
    atoms = periodic_cell(seed=2)
    batch = collate([atoms_to_graph(atoms, SPECIES_3BPA, 4.0, dtype=torch.float64)])
    assert loaded.config.long_range and abs(loaded(batch).energy.item() - model(batch).energy.item()) < 1e-12


def test_slab_is_refused_with_its_periodicity():
    model = long_range_model()
    slab = periodic_cell(seed=1)
    slab.pbc = [True, True, False]
    batch = collate([atoms_to_graph(slab, SPECIES_3BPA, 4.0, dtype=torch.float64)])
    with pytest.raises(ValueError, match="periodic along 2 of 3"):
        model(batch)


@pytest.mark.parametrize(("name", "value"), [("long_range_sigma", 0.0), ("long_range_spacing", -1.0)])
def test_bad_settings_are_named(tmp_path, name, value):
    with pytest.raises(ValueError, match=name):
        TrainingConfig(train_file="x.xyz", model={"long_range": True, name: value})


@pytest.mark.parametrize("filename", ["model.ts", "model.pt2", pytest.param("compiled.pt2", marks=pytest.mark.slow)])
def test_an_exported_long_range_model_equals_the_python_model(tmp_path, frames_300K, filename):
    """The TorchScript file (Ewald sum scripted, not traced) and the torch.export file (pairs and wave vectors as
    inputs; also compiled by AOTInductor) give the Python model's energy, forces and stress (1e-10, float64) on a
    molecule, a charged molecule and periodic cells of other sizes than the traced example."""
    model = long_range_model()
    if filename.endswith(".pt2"):
        path = export_program(model, tmp_path / filename, compiled=filename == "compiled.pt2")
    else:
        path = export_model(model, tmp_path / filename)
    calculator = DeployedCalculator(path)
    charged = frames_300K[1].copy()
    charged.info["charge"] = 1.0
    small, large = periodic_cell(seed=2), periodic_cell(seed=4).repeat((2, 1, 1))
    energies = []
    for atoms in (frames_300K[1], charged, small, large):
        periodic = bool(atoms.pbc.all())
        expected = model(collate([atoms_to_graph(atoms, SPECIES_3BPA, 4.0, dtype=torch.float64)]), compute_stress=periodic)
        atoms = atoms.copy()
        atoms.calc = calculator
        energies.append(atoms.get_potential_energy())
        assert energies[-1] == pytest.approx(expected.energy.item(), abs=1e-10)
        assert np.abs(atoms.get_forces() - expected.forces.detach().numpy()).max() < 1e-10
        if periodic:
            assert np.abs(atoms.get_stress(voigt=False) - expected.stress[0].detach().numpy()).max() < 1e-10
    batch = collate([atoms_to_graph(frames_300K[1], SPECIES_3BPA, 4.0, dtype=torch.float64)])
    short_range = model.node_energies(*(batch[key] for key in ("positions", "cell", "species", "edge_index", "shifts",
                                                               "batch")), long_range=False)[0].sum().item()
    assert abs(short_range - energies[0]) > 1e-3, "the file holds the long-range term"
    assert abs(energies[0] - energies[1]) > 1e-3, "and the total charge"
    slab = small.copy()
    slab.pbc = [True, True, False]
    slab.calc = calculator
    with pytest.raises((ValueError, torch.jit.Error), match="periodic along 2 of 3"):
        slab.get_potential_energy()


#: What a user of a long-range .pt2 file runs without tace-aiida (the recipe of the file's docstring, numpy only).
WAVE_VECTOR_RECIPE = """
import json, sys, zipfile
import numpy as np
import torch
sys.modules["tace_aiida"] = None
path, inputs_path, out_path = sys.argv[1:]
module = torch.export.load(path).module()
with zipfile.ZipFile(path) as archive:
    name = next(entry for entry in archive.namelist() if entry.endswith("tace.json"))
    k_max = json.loads(archive.read(name))["long_range"]["k_max"]
graph = torch.load(inputs_path)
cell, n = graph[1][0].numpy(), len(graph[0])
if np.abs(cell).sum() == 0:
    pairs, triples = np.array(np.triu_indices(n, 1)), np.zeros((0, 3))
else:
    bounds = [int(np.floor(k_max * length / (2 * np.pi))) for length in np.linalg.norm(cell, axis=1)]
    grid = np.stack(np.meshgrid(*[np.arange(-b, b + 1) for b in bounds], indexing="ij"), -1).reshape(-1, 3)
    first_nonzero = np.array([row[np.flatnonzero(row)[0]] if row.any() else 0 for row in grid])
    grid = grid[first_nonzero > 0]
    triples = grid[np.linalg.norm(grid @ (2 * np.pi * np.linalg.inv(cell).T), axis=1) <= k_max]
    pairs = np.zeros((2, 0), dtype=np.int64)
out = module(*graph, torch.from_numpy(pairs.astype(np.int64)), torch.from_numpy(triples.astype(np.float64)))
torch.save(out, out_path)
"""


@pytest.mark.slow
def test_a_long_range_torch_export_file_runs_without_tace_aiida(tmp_path, frames_300K):
    """A fresh interpreter that cannot import tace_aiida builds the pairs and wave vectors as the file's docstring
    says and gets the Python model's energy and forces (1e-10, float64) for a molecule and a periodic cell."""
    from tace_aiida.model.export import condition_inputs, graph_inputs

    model = long_range_model()
    path = export_program(model, tmp_path / "model.pt2")
    (tmp_path / "recipe.py").write_text(WAVE_VECTOR_RECIPE)
    for atoms in (frames_300K[1], periodic_cell(seed=4).repeat((2, 1, 1))):
        inputs = graph_inputs(atoms, SPECIES_3BPA, 4.0, torch.float64) + condition_inputs(atoms, torch.float64)
        torch.save(inputs, tmp_path / "inputs.pt")
        subprocess.run([sys.executable, "recipe.py", str(path), "inputs.pt", "out.pt"], check=True, cwd=tmp_path)
        energy, _, forces, *_ = torch.load(tmp_path / "out.pt")
        expected = model(collate([atoms_to_graph(atoms, SPECIES_3BPA, 4.0, dtype=torch.float64)]))
        assert abs(energy.item() - expected.energy.item()) < 1e-10
        assert (forces - expected.forces).abs().max() < 1e-10


def ion_pair(distance: float) -> Atoms:
    """Na+ Cl- at ``distance`` (Å): E = -k_e / r + Born-Mayer repulsion, and its forces (eV, eV/Å)."""
    repulsion, decay = 1200.0, 0.32
    energy = -COULOMB_CONSTANT / distance + repulsion * math.exp(-distance / decay)
    force = -COULOMB_CONSTANT / distance**2 + repulsion / decay * math.exp(-distance / decay)
    atoms = Atoms("NaCl", positions=[[0.0, 0.0, 0.0], [distance, 0.0, 0.0]])
    atoms.info["energy"] = energy
    atoms.arrays["forces"] = np.array([[-force, 0.0, 0.0], [force, 0.0, 0.0]])
    return atoms


@pytest.mark.slow
def test_trained_long_range_model_learns_the_tail_the_short_range_model_cannot(tmp_path):
    """Trained on Na+ Cl- pairs at 2-12 Å with a 4 Å cutoff, the long-range model follows -k_e / r
    out to 20 Å; the short-range model is flat beyond its cutoff."""
    rng = np.random.default_rng(0)
    write(tmp_path / "train.xyz", [ion_pair(r) for r in rng.uniform(2.2, 12.0, size=60)])
    errors = {}
    for long_range in (False, True):
        settings = TrainingConfig.from_dict(
            dict(
                train_file="train.xyz", valid_fraction=0.1, atomic_energies={11: 0.0, 17: 0.0},
                model={"channels": 8, "radial_mlp": [16, 16], "max_edge_rank": 1, "correlation": 1,
                       "num_interactions": 1, "r_max": 4.0, "long_range": long_range},
                energy_weight=10.0, forces_weight=10.0, max_epochs=150, batch_size=10, lr=0.01, patience=150,
                output_dir=f"run_{long_range}", progress_bar=False,
            ),
            base_dir=tmp_path,
        )
        model, _ = load_model(train(settings)["checkpoint"])
        tail = [14.0, 20.0]
        predicted = [
            model(collate([atoms_to_graph(ion_pair(r), [11, 17], 4.0, dtype=torch.float64)]), compute_forces=False)
            .energy.item() for r in tail
        ]
        difference = predicted[1] - predicted[0]
        errors[long_range] = abs(difference - (ion_pair(20.0).info["energy"] - ion_pair(14.0).info["energy"]))
    # The tail from 14 to 20 Å is 0.31 eV: the short-range model misses all of it.
    assert errors[False] > 0.25
    assert errors[True] < 0.1 * errors[False], errors
