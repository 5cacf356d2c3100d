"""Ensembles evaluated in one stacked forward pass equal their members evaluated one by one."""

from __future__ import annotations

import platform

import numpy as np
import pytest
import torch
from tace_aiida.model.calculator import TACECalculator, keep_freed_memory
from tace_aiida.model.checkpoint import load_model, save_checkpoint
from tace_aiida.model.data import atoms_to_graph, collate
from tace_aiida.model.ensemble import StackedEnsemble, stacking_obstacle

from .conftest import SPECIES_3BPA, default_dtype, periodic_cell, small_model

pytestmark = pytest.mark.usefixtures("one_thread")

RESULTS = ["energy", "energies", "forces", "energy_std", "energy_std_per_atom", "forces_std", "max_force_std", "descriptors"]


def test_stacked_outputs_equal_each_member(ensemble_checkpoints, frames_300K):
    models = [load_model(path)[0] for path in ensemble_checkpoints]
    ensemble = StackedEnsemble(models)
    for atoms, stress in [(frames_300K[0], False), (periodic_cell(seed=1), True)]:
        batch = collate([atoms_to_graph(atoms, SPECIES_3BPA, 5.0, dtype=torch.float64)])
        stacked = ensemble(batch, compute_stress=stress, compute_descriptors=True)
        for index, model in enumerate(models):
            single = model(batch, compute_stress=stress, compute_descriptors=True)
            for name in ["energy", "node_energy", "forces", "descriptors"] + (["virial", "stress"] if stress else []):
                assert (getattr(stacked, name)[index] - getattr(single, name)).abs().max() < 1e-10, name
    assert len({round(e, 6) for e in stacked.energy[:, 0].tolist()}) == 3, "members must differ"


@pytest.mark.parametrize("periodic", [False, True])
def test_batched_calculator_equals_one_by_one(ensemble_checkpoints, frames_300K, periodic):
    atoms = periodic_cell(seed=2) if periodic else frames_300K[4].copy()
    results = {}
    for batched in (True, False):
        calculator = TACECalculator(ensemble_checkpoints, device="cpu", batched=batched)
        assert (calculator.ensemble is not None) == batched
        calculator.calculate(atoms, ["energy"])
        results[batched] = calculator.results
    assert results[True]["max_force_std"] > 1e-3 and results[True]["energy_std"] > 1e-3
    names = RESULTS + (["stress", "stress_std"] if periodic else [])
    assert set(results[True]) == set(results[False]) == set(names) | {"free_energy"}
    for name in names:
        assert np.abs(np.asarray(results[True][name]) - np.asarray(results[False][name])).max() < 1e-10, name


def test_members_that_cannot_be_stacked_fall_back_with_a_warning(ensemble_checkpoints, tmp_path, frames_300K):
    with default_dtype(torch.float64):
        other = save_checkpoint(tmp_path / "narrower.pt", small_model(seed=4, channels=4))
    models = [load_model(path)[0] for path in (ensemble_checkpoints[0], other)]
    obstacle = stacking_obstacle(models)
    assert obstacle is not None and "channels=4" in obstacle
    with pytest.raises(ValueError, match="cannot be stacked.*channels"):
        StackedEnsemble(models)
    with pytest.warns(UserWarning, match="one by one.*channels=4"):
        calculator = TACECalculator([ensemble_checkpoints[0], other], device="cpu", batched=True)
    assert calculator.ensemble is None
    atoms = frames_300K[0].copy()
    atoms.calc = calculator
    assert np.isfinite(atoms.get_forces()).all() and atoms.calc.results["max_force_std"] > 0
    assert atoms.calc.results["descriptors"].shape == (16,)


def test_members_of_another_cutoff_are_refused_naming_both_files(ensemble_checkpoints, tmp_path):
    with default_dtype(torch.float64):
        other = save_checkpoint(tmp_path / "other_cutoff.pt", small_model(seed=4, r_max=4.0))
    with pytest.raises(ValueError, match=f"{ensemble_checkpoints[0]} and {other} differ in r_max: 5.0 and 4.0"):
        TACECalculator([ensemble_checkpoints[0], other], device="cpu")


def test_batching_by_default_on_gpus_only(ensemble_checkpoints):
    assert TACECalculator(ensemble_checkpoints, device="cpu").ensemble is None
    if torch.cuda.is_available():
        assert TACECalculator(ensemble_checkpoints, device="cuda").ensemble is not None


def test_members_in_different_dtypes_are_not_stacked(ensemble_checkpoints):
    models = [load_model(ensemble_checkpoints[0])[0], load_model(ensemble_checkpoints[1], dtype=torch.float32)[0]]
    assert "float32" in stacking_obstacle(models)


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="mallopt is glibc's")
def test_keeping_freed_memory_leaves_results_unchanged(ensemble_checkpoints):
    atoms = periodic_cell(seed=3)
    calculator = TACECalculator(ensemble_checkpoints, device="cpu")
    calculator.calculate(atoms, ["energy"])
    before = dict(calculator.results)
    assert keep_freed_memory()
    calculator.calculate(atoms, ["energy"])
    for name, value in before.items():
        assert np.array_equal(np.asarray(calculator.results[name]), np.asarray(value)), name
