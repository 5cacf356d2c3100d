"""Single-model uncertainty from the potential's own features: statistics on known Gaussians, the
likelihood scale on known errors, the trained checkpoint, the calculator and MD that use it."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from tace_aiida.model import md
from tace_aiida.model.calculator import TACECalculator
from tace_aiida.model.checkpoint import load_model, read_checkpoint, save_checkpoint
from tace_aiida.model.feature_uncertainty import (
    FeatureMoments,
    FeatureUncertainty,
    likelihood_scale,
    species_gaussians,
)

from .conftest import random_orthogonal


def gaussian_samples(rng: np.random.Generator, count: int, mean: np.ndarray, covariance: np.ndarray) -> torch.Tensor:
    return torch.tensor(rng.multivariate_normal(mean, covariance, size=count))


def test_species_gaussians_recover_known_means_and_covariances():
    rng = np.random.default_rng(0)
    width = 4
    truths = []
    features, species = [], []
    for index in range(2):
        root = rng.normal(size=(width, width))
        mean, covariance = rng.normal(size=width) * 3.0, root @ root.T + 0.5 * np.eye(width)
        truths.append((mean, covariance))
        features.append(gaussian_samples(rng, 40000, mean, covariance))
        species.append(torch.full((40000,), index))
    means, precisions = species_gaussians(torch.cat(features), torch.cat(species), num_species=2)
    for index, (mean, covariance) in enumerate(truths):
        assert np.abs(means[index].numpy() - mean).max() < 0.05
        recovered = np.linalg.inv(precisions[index].numpy())
        assert np.abs(recovered - covariance).max() < 0.05 * np.abs(covariance).max()

    fitted = FeatureUncertainty(means, precisions, scale=1.0)
    fresh = gaussian_samples(rng, 5000, *truths[1])
    distances = fitted.distances(fresh, torch.ones(5000, dtype=torch.long))
    assert float((distances**2).mean()) == pytest.approx(1.0, abs=0.05)  # chi-square over d, mean 1
    outlier = torch.tensor(truths[1][0] + 10.0 * np.sqrt(np.diag(truths[1][1])))[None]
    assert float(fitted.distances(outlier, torch.ones(1, dtype=torch.long))) > 5.0


def test_a_species_without_atoms_takes_the_pooled_statistics_and_a_rare_one_stays_finite():
    rng = np.random.default_rng(1)
    features = torch.cat([gaussian_samples(rng, 500, np.zeros(3), np.eye(3)), torch.tensor([[5.0, 5.0, 5.0]])])
    species = torch.cat([torch.zeros(500, dtype=torch.long), torch.ones(1, dtype=torch.long)])
    means, precisions = species_gaussians(features, species, num_species=3)
    assert torch.allclose(means[2], features.double().mean(dim=0))
    assert torch.isfinite(precisions).all()
    assert torch.allclose(means[1], torch.tensor([5.0, 5.0, 5.0], dtype=torch.float64))


def test_moments_added_batch_by_batch_equal_those_of_all_atoms_at_once():
    rng = np.random.default_rng(3)
    features, species = torch.tensor(rng.normal(size=(300, 5))), torch.tensor(rng.integers(0, 3, size=300))
    moments = FeatureMoments(num_species=3, width=5)
    for chunk in torch.arange(300).split(70):
        moments.add(features[chunk], species[chunk])
    for streamed, at_once in zip(moments.gaussians(), species_gaussians(features, species, num_species=3), strict=True):
        assert torch.allclose(streamed, at_once, rtol=1e-10, atol=1e-12)


def test_the_likelihood_scale_recovers_the_scale_of_known_errors():
    rng = np.random.default_rng(2)
    distances = torch.tensor(rng.uniform(0.5, 3.0, size=20000))
    errors = torch.tensor(rng.normal(size=(20000, 3))) * (0.2 * distances[:, None] / np.sqrt(3.0))
    assert likelihood_scale(distances, errors) == pytest.approx(0.2, rel=0.02)
    with pytest.raises(ValueError, match="no atom with a nonzero feature distance"):
        likelihood_scale(torch.zeros(3), torch.ones(3, 3))


def test_training_stores_a_fitted_feature_uncertainty(trained):
    state = read_checkpoint(trained["checkpoint"])["feature_uncertainty"]
    model, _ = load_model(trained["checkpoint"])
    width = model.config.channels * model.config.num_interactions
    assert state["mean"].shape == (len(model.config.atomic_numbers), width)
    assert state["precision"].shape == (len(model.config.atomic_numbers), width, width)
    assert 0.0 < state["scale"] < 10.0


def test_one_checkpoint_predicts_force_errors_that_grow_out_of_distribution(trained, frames_300K, frames_1200K):
    calculator = TACECalculator(trained["checkpoint"], device="cpu", uncertainty="features")

    def mean_prediction(frames):
        predicted = []
        for atoms in frames:
            atoms = atoms.copy()
            atoms.calc = calculator
            atoms.get_forces()
            predicted.append(calculator.results["forces_std"])
            assert calculator.results["max_force_std"] == pytest.approx(predicted[-1].max())
        return float(np.mean(np.concatenate(predicted)))

    assert mean_prediction(frames_1200K) > 1.2 * mean_prediction(frames_300K)


def test_the_feature_uncertainty_is_invariant_under_rotation_reflection_and_translation(trained, frames_1200K):
    calculator = TACECalculator(trained["checkpoint"], device="cpu", uncertainty="features", dtype="float64")
    atoms = frames_1200K[0].copy()
    atoms.calc = calculator
    atoms.get_forces()
    reference = calculator.results["forces_std"].copy()
    moved = atoms.copy()
    moved.positions = atoms.positions @ random_orthogonal(5, reflect=True).T + np.array([1.0, -2.0, 0.5])
    moved.calc = calculator
    moved.get_forces()
    assert np.abs(calculator.results["forces_std"] - reference).max() < 1e-10 * max(1.0, reference.max())


def with_state(path: str, state: dict, target) -> str:
    model, metadata = load_model(path)
    return str(save_checkpoint(target, model, metadata, feature_uncertainty=state))


def synthetic_state(checkpoint: str, seed: int) -> dict:
    model, _ = load_model(checkpoint)
    width = model.config.channels * model.config.num_interactions
    generator = torch.Generator().manual_seed(seed)
    species = len(model.config.atomic_numbers)
    root = torch.randn(species, width, width, generator=generator, dtype=torch.float64)
    precision = root @ root.mT / width + torch.eye(width, dtype=torch.float64)
    return FeatureUncertainty(torch.randn(species, width, generator=generator, dtype=torch.float64), precision,
                              scale=0.1 * (seed + 1)).state()


def test_an_ensemble_gives_the_root_mean_square_of_its_members_expected_errors_batched_or_not(ensemble_checkpoints, tmp_path):
    from .test_bias import MOLECULE

    members = [with_state(path, synthetic_state(path, index), tmp_path / f"with_state_{index}.pt")
               for index, path in enumerate(ensemble_checkpoints)]
    alone = []
    for path in members:
        atoms = MOLECULE.copy()
        atoms.calc = TACECalculator(path, device="cpu", uncertainty="features")
        atoms.get_forces()
        alone.append(atoms.calc.results["forces_std"])
    expected = np.sqrt(np.mean(np.square(alone), axis=0))
    for batched in (False, True):
        atoms = MOLECULE.copy()
        atoms.calc = TACECalculator(members, device="cpu", uncertainty="features", batched=batched)
        atoms.get_forces()
        assert np.abs(atoms.calc.results["forces_std"] - expected).max() < 1e-12 * expected.max()


def test_features_need_a_fitted_checkpoint_and_a_known_source(ensemble_checkpoints):
    with pytest.raises(ValueError, match=r"member_0\.pt has no fitted feature uncertainty"):
        TACECalculator(ensemble_checkpoints[0], device="cpu", uncertainty="features")
    with pytest.raises(ValueError, match="uncertainty must be one of ensemble, features, not 'dropout'"):
        TACECalculator(ensemble_checkpoints, device="cpu", uncertainty="dropout")
    with pytest.raises(ValueError, match="uncertainty must be one of ensemble, features, not 'dropout'"):
        md.MDSettings(checkpoints=ensemble_checkpoints, uncertainty="dropout")


def test_tace_md_with_one_model_stops_on_its_feature_uncertainty(trained, frames_300K, tmp_path):
    import shutil

    from ase.io import write

    shutil.copy(trained["checkpoint"], tmp_path / "member_0.pt")
    write(tmp_path / md.STRUCTURE, frames_300K[0], format="extxyz")
    settings = {"checkpoints": ["member_0.pt"], "temperature": 300.0, "steps": 20, "save_interval": 1,
                "max_force_std": 1e-3, "uncertainty": "features", "device": "cpu"}
    (tmp_path / md.SETTINGS).write_text(json.dumps(settings))
    assert md.main(tmp_path) == 0
    summary = json.loads((tmp_path / md.RESULT).read_text())
    trajectory = np.load(tmp_path / md.TRAJECTORY)
    assert summary["stop_reason"] == "uncertainty"
    assert trajectory["max_force_std"][-1] > 1e-3 and (trajectory["forces_std"] > 0).all()

    settings["uncertainty"] = "ensemble"  # one member has no spread: the run is not stopped
    (tmp_path / md.SETTINGS).write_text(json.dumps(settings))
    assert md.main(tmp_path) == 0
    assert json.loads((tmp_path / md.RESULT).read_text())["stop_reason"] == "completed"
