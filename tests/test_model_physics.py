"""Physics every model configuration must obey, run over ``MODEL_CASES`` (tests/conftest.py).

Symmetries (rotation, reflection, translation, permutation), forces and stress as exact
derivatives of the energy, smoothness at the cutoff, batching, and extensivity. Errors are
relative to the largest |E| (eV), |F| (eV/Å) or |virial| (eV) involved (at least 1): 1e-10 in float64, 1e-5 in
float32, which skips the finite-difference and cutoff tests (its resolution is too coarse).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from ase import Atoms
from tace_aiida.model.data import atoms_to_graph, collate
from tace_aiida.model.potential import Outputs

from .conftest import SPECIES_3BPA, periodic_cell, random_orthogonal

pytestmark = pytest.mark.usefixtures("one_thread")


def evaluate(model, structures: list[Atoms], stress: bool = False, forces: bool = True) -> Outputs:
    """One batched evaluation of ``structures`` in the model's dtype (with descriptors)."""
    dtype = next(model.parameters()).dtype
    graphs = [atoms_to_graph(atoms, SPECIES_3BPA, model.config.r_max, dtype=dtype) for atoms in structures]
    return model(collate(graphs), compute_forces=forces, compute_stress=stress, compute_descriptors=True)


def as_array(tensor: torch.Tensor) -> np.ndarray:
    return tensor.detach().cpu().double().numpy()


def assert_close(actual, expected, tolerance: float) -> None:
    """``max |actual - expected| <= tolerance * max(1, max |expected|)``."""
    actual, expected = np.asarray(actual, dtype=float), np.asarray(expected, dtype=float)
    error = np.abs(actual - expected).max()
    assert error <= tolerance * max(1.0, np.abs(expected).max()), f"error {error:.2e} (tolerance {tolerance:.0e})"


def skip_unless_float64(case) -> None:
    if case.dtype != torch.float64:
        pytest.skip("finite differences and the cutoff need float64 resolution")


def skip_if_long_range(case) -> None:
    if case.long_range:
        pytest.skip("the long-range term has no cutoff: its 1/r tail is tested in tests/test_long_range.py")


def energy_along(model, atoms: Atoms, displace, steps: tuple[float, ...]) -> list[float]:
    """Energies of ``displace(atoms, t)`` for each t (Å or strain)."""
    return [evaluate(model, [displace(atoms, t)], forces=False).energy.item() for t in steps]


def five_point_derivative(energies: list[float], step: float) -> float:
    """d/dt at 0 from energies at t = -2h, -h, h, 2h (error O(h^4))."""
    minus2, minus1, plus1, plus2 = energies
    return (minus2 - 8 * minus1 + 8 * plus1 - plus2) / (12 * step)


@pytest.mark.parametrize("transformation", ["translation", "rotation", "reflection"])
def test_energy_invariant_forces_equivariant(physics_case, physics_model, frames_300K, transformation):
    atoms = frames_300K[0]
    q = {"translation": np.eye(3), "rotation": random_orthogonal(7, False), "reflection": random_orthogonal(7, True)}[
        transformation
    ]
    moved = atoms.copy()
    moved.positions = atoms.positions @ q.T + np.array([1.3, -4.2, 0.7])
    reference, transformed = evaluate(physics_model, [atoms]), evaluate(physics_model, [moved])
    assert reference.forces.abs().max() > 1e-2, "forces too small for the test to mean anything"
    tolerance = physics_case.tolerance
    assert_close(as_array(transformed.energy), as_array(reference.energy), tolerance)
    assert_close(as_array(transformed.node_energy), as_array(reference.node_energy), tolerance)
    assert_close(as_array(transformed.forces), as_array(reference.forces) @ q.T, tolerance)
    assert_close(as_array(transformed.descriptors), as_array(reference.descriptors), tolerance)


def test_tensor_outputs_rotate_as_tensors_of_their_rank(physics_case, physics_model, frames_300K):
    """Dipole ``Q mu``, polarizability ``Q alpha Q^T`` (also for reflections: both are polar), unmoved by
    translation; the polarizability is symmetric."""
    if physics_model.tensor_readouts is None:
        pytest.skip("no tensorial heads in this configuration")
    atoms = frames_300K[0]
    reference = evaluate(physics_model, [atoms])
    for q in (random_orthogonal(7, False), random_orthogonal(8, True)):
        moved = atoms.copy()
        moved.positions = atoms.positions @ q.T + np.array([1.3, -4.2, 0.7])
        transformed = evaluate(physics_model, [moved])
        tolerance = physics_case.tolerance
        if reference.dipole is not None:
            assert np.abs(as_array(reference.dipole)).max() > 1e-2
            assert_close(as_array(transformed.dipole[0]), q @ as_array(reference.dipole[0]), tolerance)
        if reference.polarizability is not None:
            alpha = as_array(reference.polarizability[0])
            assert np.abs(alpha - np.trace(alpha) / 3 * np.eye(3)).max() > 1e-6, "the anisotropic part must not vanish"
            assert_close(alpha, alpha.T, tolerance)
            assert_close(as_array(transformed.polarizability[0]), q @ alpha @ q.T, tolerance)


def test_periodic_cell_rotation_moves_forces_and_stress(physics_case, physics_model):
    atoms = periodic_cell(seed=1)
    q = random_orthogonal(2, reflect=True)
    moved = atoms.copy()
    moved.set_cell(atoms.cell[:] @ q.T, scale_atoms=True)
    moved.positions += np.array([0.4, 2.1, -0.3])
    moved.wrap()
    reference, transformed = evaluate(physics_model, [atoms], stress=True), evaluate(physics_model, [moved], stress=True)
    assert reference.virial.abs().max() > 1e-2
    tolerance = physics_case.tolerance
    assert_close(as_array(transformed.energy), as_array(reference.energy), tolerance)
    assert_close(as_array(transformed.forces), as_array(reference.forces) @ q.T, tolerance)
    assert_close(as_array(transformed.virial[0]), q @ as_array(reference.virial[0]) @ q.T, tolerance)
    volume = atoms.get_volume()
    assert_close(volume * as_array(transformed.stress[0]), q @ as_array(reference.stress[0]) @ q.T * volume, tolerance)


def test_permutation_of_atoms(physics_case, physics_model, frames_300K):
    atoms = frames_300K[1]
    order = np.random.default_rng(0).permutation(len(atoms))
    reference, permuted = evaluate(physics_model, [atoms]), evaluate(physics_model, [atoms[order]])
    tolerance = physics_case.tolerance
    assert_close(as_array(permuted.energy), as_array(reference.energy), tolerance)
    assert_close(as_array(permuted.node_energy), as_array(reference.node_energy)[order], tolerance)
    assert_close(as_array(permuted.forces), as_array(reference.forces)[order], tolerance)


def test_forces_are_minus_energy_gradient(physics_case, physics_model, frames_300K):
    """Along two random directions of all 3N coordinates, dE/dt = -F . d (5-point stencil)."""
    skip_unless_float64(physics_case)
    atoms = frames_300K[2]
    forces = as_array(evaluate(physics_model, [atoms]).forces)
    rng = np.random.default_rng(1)
    step = 1e-3
    for _ in range(2):
        direction = rng.normal(size=forces.shape)
        direction /= np.linalg.norm(direction)

        def displace(structure: Atoms, t: float, direction: np.ndarray = direction) -> Atoms:
            moved = structure.copy()
            moved.positions += t * direction
            return moved

        derivative = five_point_derivative(energy_along(physics_model, atoms, displace, (-2 * step, -step, step, 2 * step)), step)
        assert abs(derivative + (forces * direction).sum()) < 1e-9 * max(1.0, abs(derivative))


def test_stress_is_strain_derivative_over_volume(physics_case, physics_model):
    """For a random symmetric strain direction S, dE/dt = V stress : S and virial = -V stress."""
    skip_unless_float64(physics_case)
    atoms = periodic_cell(seed=4)
    out = evaluate(physics_model, [atoms], stress=True)
    stress, volume = as_array(out.stress[0]), atoms.get_volume()
    assert np.abs(stress).max() * volume > 1e-2
    assert_close(as_array(out.virial[0]), -stress * volume, physics_case.tolerance)
    rng = np.random.default_rng(2)
    direction = rng.normal(size=(3, 3))
    direction = (direction + direction.T) / np.linalg.norm(direction + direction.T)

    def strain(structure: Atoms, t: float) -> Atoms:
        deformed = structure.copy()
        deformed.set_cell(structure.cell[:] @ (np.eye(3) + t * direction).T, scale_atoms=True)
        return deformed

    step = 1e-4
    derivative = five_point_derivative(energy_along(physics_model, atoms, strain, (-2 * step, -step, step, 2 * step)), step)
    assert abs(derivative - volume * (stress * direction).sum()) < 1e-8 * max(1.0, abs(derivative))


def test_energy_and_forces_continuous_across_cutoff(physics_case, physics_model):
    """A dimer whose only edge crosses the cutoff: energy and forces join smoothly at r_max."""
    skip_unless_float64(physics_case)
    skip_if_long_range(physics_case)
    r_max = physics_model.config.r_max

    def dimer(distance: float) -> Outputs:
        return evaluate(physics_model, [Atoms("CN", positions=[[0, 0, 0], [distance, 0.0, 0.0]])])

    outside, just_inside, near = dimer(r_max + 1e-7), dimer(r_max - 1e-7), dimer(r_max - 1e-4)
    assert outside.forces.abs().max() == 0.0
    assert abs(just_inside.energy.item() - outside.energy.item()) < 1e-12
    assert just_inside.forces.abs().max() < 1e-12
    assert near.forces.abs().max() < 1e-6
    assert dimer(r_max - 0.5).forces.abs().max() > 1e-6, "an atom inside the cutoff must feel a force"


def test_batch_equals_structures_one_by_one(physics_case, physics_model, frames_300K):
    tolerance = physics_case.tolerance
    molecules = [frames_300K[0], periodic_cell(seed=2), frames_300K[5]]
    batched = evaluate(physics_model, molecules)
    singles = [evaluate(physics_model, [atoms]) for atoms in molecules]
    assert_close(as_array(batched.energy), np.concatenate([as_array(s.energy) for s in singles]), tolerance)
    assert_close(as_array(batched.forces), np.concatenate([as_array(s.forces) for s in singles]), tolerance)
    assert_close(as_array(batched.descriptors), np.concatenate([as_array(s.descriptors) for s in singles]), tolerance)
    for name in ("dipole", "polarizability"):
        if getattr(batched, name) is not None:
            assert_close(as_array(getattr(batched, name)), np.concatenate([as_array(getattr(s, name)) for s in singles]), tolerance)
    cells = [periodic_cell(seed=2), periodic_cell(seed=5, n_atoms=9)]
    batched = evaluate(physics_model, cells, stress=True)
    singles = [evaluate(physics_model, [atoms], stress=True) for atoms in cells]
    assert_close(as_array(batched.virial), np.concatenate([as_array(s.virial) for s in singles]), tolerance)
    volumes = np.array([atoms.get_volume() for atoms in cells])[:, None, None]
    assert_close(as_array(batched.stress) * volumes, np.concatenate([as_array(s.stress) for s in singles]) * volumes, tolerance)


def test_two_far_apart_copies_have_twice_the_energy(physics_case, physics_model, frames_300K):
    """E0s and the shift are per atom, so the total energy (E0s included) is extensive."""
    skip_if_long_range(physics_case)
    atoms = frames_300K[3]
    far = atoms.copy()
    far.positions += np.array([3 * physics_model.config.r_max + 20.0, 0.0, 0.0])
    single, pair = evaluate(physics_model, [atoms]), evaluate(physics_model, [atoms + far])
    tolerance = physics_case.tolerance
    assert_close(as_array(pair.energy), 2 * as_array(single.energy), tolerance)
    assert_close(as_array(pair.node_energy), np.tile(as_array(single.node_energy), 2), tolerance)
    assert_close(as_array(pair.forces), np.tile(as_array(single.forces), (2, 1)), tolerance)


def test_supercell_is_extensive(physics_case, physics_model):
    """A 2x1x1 periodic supercell: twice the energy, the same forces per image, the same stress."""
    atoms = periodic_cell(seed=3)
    single, double = evaluate(physics_model, [atoms], stress=True), evaluate(physics_model, [atoms * (2, 1, 1)], stress=True)
    tolerance = physics_case.tolerance
    assert_close(as_array(double.energy), 2 * as_array(single.energy), tolerance)
    assert_close(as_array(double.forces), np.tile(as_array(single.forces), (2, 1)), tolerance)
    assert_close(as_array(double.virial), 2 * as_array(single.virial), tolerance)
    assert_close(as_array(double.stress) * atoms.get_volume(), as_array(single.stress) * atoms.get_volume(), tolerance)
