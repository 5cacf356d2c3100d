"""The full potential: symmetries, derivatives, smoothness, batching (float64 unless stated)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from ase import Atoms

from tace_aiida.model.data import atoms_to_graph, collate
from tace_aiida.model.potential import ModelConfig

from .conftest import SPECIES_3BPA, periodic_cell, random_orthogonal, small_model


def predict(model, atoms: Atoms, stress: bool = False, descriptors: bool = False):
    graph = collate([atoms_to_graph(atoms, SPECIES_3BPA, model.config.r_max)])
    out = model(graph, compute_forces=True, compute_stress=stress, compute_descriptors=descriptors)
    return out


def energy(model, atoms: Atoms) -> float:
    graph = collate([atoms_to_graph(atoms, SPECIES_3BPA, model.config.r_max)])
    return model(graph, compute_forces=False).energy.item()


@pytest.fixture
def model(float64):
    # Small E0s keep finite differences of the energy precise; a large scale gives O(0.1) eV/Å forces.
    return small_model(
        seed=3, max_hidden_rank=2, max_edge_rank=3, correlation=3, num_interactions=2,
        atomic_energies=[0.1, -0.2, 0.3, 0.05], scale=20.0,
    )


@pytest.mark.parametrize("reflect", [False, True])
def test_energy_invariant_forces_equivariant(model, frames_300K, reflect):
    atoms = frames_300K[0].copy()
    reference = predict(model, atoms, descriptors=True)
    assert reference.forces.abs().max() > 1e-3, "forces too small for the test to mean anything"
    q = random_orthogonal(7, reflect)
    moved = atoms.copy()
    moved.positions = atoms.positions @ q.T + np.array([1.3, -4.2, 0.7])
    transformed = predict(model, moved, descriptors=True)
    assert abs(transformed.energy.item() - reference.energy.item()) < 1e-10
    expected_forces = reference.forces.detach().numpy() @ q.T
    assert np.abs(transformed.forces.detach().numpy() - expected_forces).max() < 1e-10
    assert (transformed.descriptors - reference.descriptors).abs().max() < 1e-10


def test_permutation_of_atoms(model, frames_300K):
    atoms = frames_300K[1]
    order = np.random.default_rng(0).permutation(len(atoms))
    reference = predict(model, atoms)
    permuted = predict(model, atoms[order])
    assert abs(permuted.energy.item() - reference.energy.item()) < 1e-10
    assert (permuted.forces - reference.forces[order]).abs().max() < 1e-10
    assert (permuted.node_energy - reference.node_energy[order]).abs().max() < 1e-10


def test_periodic_cell_symmetries(model):
    atoms = periodic_cell(seed=1)
    reference = predict(model, atoms, stress=True)
    q = random_orthogonal(2, reflect=True)
    moved = atoms.copy()
    moved.set_cell(atoms.cell[:] @ q.T, scale_atoms=True)
    moved.positions += np.array([0.4, 2.1, -0.3])
    moved.wrap()
    transformed = predict(model, moved, stress=True)
    assert abs(transformed.energy.item() - reference.energy.item()) < 1e-10
    assert (transformed.forces.detach().numpy() - reference.forces.detach().numpy() @ q.T).max() < 1e-10
    expected_stress = q @ reference.stress[0].detach().numpy() @ q.T
    assert np.abs(transformed.stress[0].detach().numpy() - expected_stress).max() < 1e-10


def test_forces_are_minus_energy_gradient(model, frames_300K):
    atoms = frames_300K[2].copy()
    forces = predict(model, atoms).forces.detach().numpy()
    step = 1e-5
    rng = np.random.default_rng(1)
    for index in rng.choice(len(atoms), size=5, replace=False):
        for axis in range(3):
            plus, minus = atoms.copy(), atoms.copy()
            plus.positions[index, axis] += step
            minus.positions[index, axis] -= step
            derivative = (energy(model, plus) - energy(model, minus)) / (2 * step)
            assert abs(forces[index, axis] + derivative) < 1e-7 * max(1.0, abs(derivative))


def test_stress_is_strain_derivative_over_volume(model):
    atoms = periodic_cell(seed=4)
    out = predict(model, atoms, stress=True)
    stress = out.stress[0].detach().numpy()
    assert np.abs(stress).max() > 1e-4
    assert np.abs(out.virial[0].detach().numpy() + stress * atoms.get_volume()).max() < 1e-12
    step = 1e-6
    for i in range(3):
        for j in range(3):
            strained = []
            for sign in (1, -1):
                strain = np.eye(3)
                strain[i, j] += sign * step / 2
                strain[j, i] += sign * step / 2
                deformed = atoms.copy()
                deformed.set_cell(atoms.cell[:] @ strain.T, scale_atoms=True)
                strained.append(energy(model, deformed))
            derivative = (strained[0] - strained[1]) / (2 * step)
            assert abs(stress[i, j] - derivative / atoms.get_volume()) < 1e-7


def test_energy_and_forces_continuous_across_cutoff(model):
    """A dimer whose only edge crosses the cutoff: energy and forces join smoothly at r_max."""
    r_max = model.config.r_max
    results = {}
    for distance in (r_max - 1e-4, r_max - 1e-7, r_max + 1e-7):
        out = predict(model, Atoms("CN", positions=[[0, 0, 0], [distance, 0.0, 0.0]]))
        results[distance] = (out.energy.item(), out.forces.detach().numpy())
    outside_energy, outside_forces = results[r_max + 1e-7]
    assert np.abs(outside_forces).max() == 0.0
    assert abs(results[r_max - 1e-7][0] - outside_energy) < 1e-12
    assert np.abs(results[r_max - 1e-7][1]).max() < 1e-12
    assert np.abs(results[r_max - 1e-4][1]).max() < 1e-6
    inside = predict(model, Atoms("CN", positions=[[0, 0, 0], [r_max - 0.5, 0.0, 0.0]]))
    assert np.abs(inside.forces.detach().numpy()).max() > 1e-6, "an atom inside the cutoff must feel a force"


def test_batch_equals_structures_one_by_one(model, frames_300K):
    structures = [frames_300K[0], periodic_cell(seed=2), frames_300K[5]]
    graphs = [atoms_to_graph(a, SPECIES_3BPA, model.config.r_max) for a in structures]
    batched = model(collate(graphs), compute_forces=True, compute_stress=False)
    singles = [model(collate([g]), compute_forces=True) for g in graphs]
    assert (batched.energy - torch.cat([s.energy for s in singles])).abs().max() < 1e-10
    assert (batched.forces - torch.cat([s.forces for s in singles])).abs().max() < 1e-10


def test_float32_agrees_with_float64(frames_300K):
    previous = torch.get_default_dtype()
    try:
        torch.set_default_dtype(torch.float64)
        reference = small_model(seed=5)
        torch.set_default_dtype(torch.float32)
        single = small_model(seed=5)
        single.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in reference.state_dict().items()})
        atoms = frames_300K[3]
        e64 = reference(collate([atoms_to_graph(atoms, SPECIES_3BPA, 5.0, dtype=torch.float64)]))
        e32 = single(collate([atoms_to_graph(atoms, SPECIES_3BPA, 5.0, dtype=torch.float32)]))
    finally:
        torch.set_default_dtype(previous)
    assert e32.energy.dtype == torch.float32
    assert abs(e32.energy.item() - e64.energy.item()) < 1e-6 * abs(e64.energy.item())
    assert (e32.forces.double() - e64.forces).abs().max() < 1e-4


def test_unknown_element_is_named():
    with pytest.raises(ValueError, match="contains Cu, which the model was not trained on"):
        atoms_to_graph(Atoms("CuH", positions=[[0, 0, 0], [1.5, 0, 0]]), SPECIES_3BPA, 5.0)


def test_model_settings_reject_inconsistent_values():
    with pytest.raises(ValueError, match="2 atomic energies given for 4 species"):
        ModelConfig(atomic_numbers=SPECIES_3BPA, atomic_energies=[0.0, 0.0])
    with pytest.raises(ValueError, match="max_hidden_rank=4"):
        ModelConfig(atomic_numbers=[1], atomic_energies=[0.0], max_hidden_rank=4, max_edge_rank=3)


@pytest.mark.parametrize("correlation,max_edge_rank,hidden", [(1, 2, 0), (2, 4, 2), (3, 4, 1)])
def test_other_architectures_stay_invariant(float64, frames_300K, correlation, max_edge_rank, hidden):
    model = small_model(seed=1, correlation=correlation, max_edge_rank=max_edge_rank, max_hidden_rank=hidden)
    atoms = frames_300K[4].copy()
    reference = energy(model, atoms)
    atoms.positions = atoms.positions @ random_orthogonal(3, True).T
    assert abs(energy(model, atoms) - reference) < 1e-10
