"""The TDN fast path: CP fits of the stacked product, equivariance against the CP rank, and the model's
use by training, checkpoints, ensembles and export.

The symmetry and derivative tests of models with ``tensor_decomposition: true`` run in the model test
suite (``MODEL_CASES`` in tests/conftest.py).
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from tace_aiida.model.blocks import InteractionBlock
from tace_aiida.model.calculator import TACECalculator
from tace_aiida.model.checkpoint import load_model, save_checkpoint
from tace_aiida.model.config import TrainingConfig
from tace_aiida.model.data import atoms_to_graph, collate
from tace_aiida.model.decomposed_blocks import DecomposedInteractionBlock
from tace_aiida.model.decomposition import cache_file, fit_cp_factors, fit_factors, stacked_product_map
from tace_aiida.model.ensemble import StackedEnsemble
from tace_aiida.model.equivariance import rotation_errors
from tace_aiida.model.export import DeployedCalculator, export_model
from tace_aiida.model.training import train

from .conftest import SPECIES_3BPA, default_dtype, periodic_cell, small_model, training_settings

pytestmark = pytest.mark.usefixtures("one_thread")


def tdn_model(seed: int = 1, **settings) -> torch.nn.Module:
    """A float64 random-weight model on the TDN path with O(1) eV/Å forces."""
    options = dict(max_edge_rank=3, max_hidden_rank=1, correlation=3, tensor_decomposition=True, scale=20.0,
                   atomic_energies=[0.1, -0.2, 0.3, 0.05])
    with default_dtype(torch.float64):
        return small_model(seed=seed, **(options | settings))


def test_stacked_map_is_the_sum_of_the_exact_interaction_paths():
    """The TDN map equals the exact block's per-path couplings summed into their output ranks."""
    exact = InteractionBlock(1, 3, channels=2, num_radial=4, radial_mlp=(4,), message_divisor=1.0).double()
    fused = exact.fused.unflatten(1, (exact.num_pairs, -1))  # [D_edge, (component, path) pairs, D_edge]
    summed_paths = []
    for component in range(4):  # a node feature that is 1 in this component, every path weighted 1
        pairs = [(torch.arange(rows.start, rows.stop) == component).double()[:, None].expand(-1, paths.stop - paths.start)
                 for rows, paths in exact.path_groups]
        summed_paths.append(torch.einsum("k,jkm->jm", torch.cat([pair.flatten() for pair in pairs]), fused))
    assert torch.allclose(stacked_product_map(1, 3, 3), torch.stack(summed_paths), atol=1e-14)


@pytest.mark.parametrize(("ranks", "cp_rank"), [((1, 2, 2), 32), ((2, 2, 1), 32), ((1, 3, 3), 48)])
def test_cp_fit_reproduces_the_map_at_a_sufficient_rank(ranks, cp_rank):
    a, b, c, error = fit_factors(*ranks, cp_rank)
    rebuilt = torch.einsum("ir,jr,kr->ijk", a, b, c)
    assert error < 1e-10
    assert (rebuilt - stacked_product_map(*ranks)).abs().max() < 1e-10


def test_cp_fit_error_falls_with_the_rank():
    errors = [fit_factors(2, 2, 2, cp_rank)[3] for cp_rank in (8, 16, 40)]
    assert errors[0] > errors[1] > 1e-3
    assert errors[2] < 1e-10


def test_cp_rank_is_lowered_where_a_smaller_one_is_exact():
    """A rank-0 input makes the map a matrix of rank 16; the 1 x 2 -> 2 map is exact at 24 (of a bound of 36).
    A higher R would only cost time per edge."""
    a, _, _, error = fit_factors(0, 3, 3, 63)
    assert a.shape == (1, 16) and error < 1e-12
    a, _, _, error = fit_factors(1, 2, 2, 63)
    assert a.shape[1] <= 28 and error < 1e-10


def test_fitted_factors_are_cached_and_a_broken_cache_file_is_refitted(tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("TACE_CP_CACHE", str(tmp_path))
    fit_cp_factors.cache_clear()
    first = fit_cp_factors(1, 2, 1, 20)
    path = cache_file(1, 2, 1, 20)
    assert path.parent == tmp_path and path.exists()
    fit_cp_factors.cache_clear()
    assert all(torch.equal(x, y) for x, y in zip(fit_cp_factors(1, 2, 1, 20)[:3], first[:3], strict=True))
    path.write_bytes(b"not a torch file")
    fit_cp_factors.cache_clear()
    again = fit_cp_factors(1, 2, 1, 20)
    assert "refitting the CP factors" in caplog.text and torch.allclose(again[0], first[0])
    fit_cp_factors.cache_clear()


def test_default_rank_is_equivariant_to_float64_precision(frames_300K):
    """With the default R = 7 L**2 every product of the default architecture is fitted exactly."""
    energy_error, forces_error = rotation_errors(tdn_model(), frames_300K[:1])
    assert energy_error < 1e-10 and forces_error < 1e-10


def test_a_low_rank_breaks_equivariance_measurably(frames_300K):
    """R = 16 leaves fit errors of 1e-1: rotations change the energy and forces visibly, which is what
    the README's table of errors against R reports."""
    energy_error, forces_error = rotation_errors(tdn_model(cp_rank=16), frames_300K[:1])
    assert energy_error > 1e-8 and forces_error > 1e-6


def test_interaction_block_broadcasts_over_members():
    """Stacked (trainable) factors with a member axis give each member its own result."""
    torch.manual_seed(0)
    with default_dtype(torch.float64):
        blocks = [DecomposedInteractionBlock(1, 2, 3, 4, (5,), 2.0, cp_rank=12, trainable=True) for _ in range(2)]
    for block in blocks:
        block.product.factor_x.data += 0.1 * torch.randn_like(block.product.factor_x)
    nodes, edges = torch.randn(5, 3, 4, dtype=torch.float64), torch.tensor([[0, 1, 2, 3], [1, 2, 3, 4]])
    harmonics, radial = torch.randn(4, 9, dtype=torch.float64), torch.randn(4, 4, dtype=torch.float64)
    stacked, _ = torch.func.stack_module_state(blocks)
    members = torch.func.functional_call(blocks[0], stacked, (nodes.expand(2, -1, -1, -1), harmonics.expand(2, -1, -1),
                                                               radial.expand(2, -1, -1), edges))
    for index, block in enumerate(blocks):
        assert torch.allclose(members[index], block(nodes, harmonics, radial, edges), atol=1e-12)


def test_frozen_factors_are_saved_buffers_and_trainable_ones_parameters(tmp_path):
    frozen, trainable = tdn_model(), tdn_model(cp_trainable=True)
    factor = "interactions.1.product.factor_x"
    assert factor in dict(frozen.named_buffers()) and factor not in dict(frozen.named_parameters())
    assert factor in dict(trainable.named_parameters())
    for model in (frozen, trainable):
        loaded, _ = load_model(save_checkpoint(tmp_path / "model.pt", model))
        assert torch.equal(loaded.state_dict()[factor], model.state_dict()[factor])


def test_a_checkpoint_loads_its_factors_without_fitting_on_a_machine_without_the_cache(tmp_path, monkeypatch,
                                                                                   frames_300K):
    """A fresh machine (empty cache folder, nothing fitted in this process) loads a TDN checkpoint without a fit
    and evaluates it exactly as the saved model; building a new model still fits."""
    import tace_aiida.model.decomposition as decomposition

    model = tdn_model(cp_trainable=True)
    path = save_checkpoint(tmp_path / "model.pt", model)
    monkeypatch.setenv("TACE_CP_CACHE", str(tmp_path / "empty-cache"))
    fit_cp_factors.cache_clear()

    def no_fit(*args):
        raise AssertionError(f"fitted CP factors {args} while loading a checkpoint")

    monkeypatch.setattr(decomposition, "fit_factors", no_fit)
    loaded, _ = load_model(path)
    batch = collate([atoms_to_graph(frames_300K[0], SPECIES_3BPA, 5.0, dtype=torch.float64)])
    assert (loaded(batch).forces - model(batch).forces).abs().max() == 0
    with pytest.raises(AssertionError, match="fitted CP factors"):
        tdn_model()
    fit_cp_factors.cache_clear()


def test_stacked_ensemble_of_tdn_models_equals_its_members(tmp_path, frames_300K):
    models = [tdn_model(seed, cp_trainable=True) for seed in (1, 2)]
    ensemble = StackedEnsemble([load_model(save_checkpoint(tmp_path / f"{i}.pt", m))[0] for i, m in enumerate(models)])
    batch = collate([atoms_to_graph(atoms, SPECIES_3BPA, 5.0, dtype=torch.float64)
                     for atoms in (frames_300K[0], periodic_cell(seed=1))])
    stacked = ensemble(batch)
    for index, model in enumerate(models):
        single = model(batch)
        assert (stacked.energy[index] - single.energy).abs().max() < 1e-10
        assert (stacked.forces[index] - single.forces).abs().max() < 1e-10


def test_exported_tdn_model_equals_the_python_model(tmp_path, frames_300K):
    checkpoint = save_checkpoint(tmp_path / "model.pt", tdn_model())
    export_model(load_model(checkpoint)[0], tmp_path / "model.ts")
    for atoms in (frames_300K[3], periodic_cell(seed=2)):
        results = []
        for calculator in (TACECalculator(checkpoint, device="cpu", dtype="float64"), DeployedCalculator(tmp_path / "model.ts")):
            calculator.calculate(atoms.copy(), ["energy"])
            results.append(calculator.results)
        for name in ["energy", "forces"] + (["stress"] if atoms.pbc.all() else []):
            assert np.abs(np.asarray(results[0][name]) - np.asarray(results[1][name])).max() < 1e-10, name


def test_bad_cp_rank_is_named():
    with pytest.raises(ValueError, match="cp_rank"):
        TrainingConfig(train_file="x.xyz", model={"tensor_decomposition": True, "cp_rank": -1})


@pytest.mark.slow
@pytest.mark.parametrize("trainable", [False, True])
def test_tace_train_trains_a_tdn_model(tmp_path, trainable, frames_300K):
    """A real training run on the 3BPA slice lowers the validation force error; frozen factors stay at
    their fit, trainable ones move; the calculator loads the result."""
    model = {"channels": 16, "radial_mlp": [32, 32], "tensor_decomposition": True, "cp_trainable": trainable}
    summary = train(TrainingConfig.from_dict(training_settings(tmp_path, model=model, max_epochs=6)))
    metrics = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines() if line]
    assert len(metrics) == 6
    assert metrics[-1]["valid_forces_rmse"] < 0.8 * metrics[0]["valid_forces_rmse"]
    trained, _ = load_model(summary["checkpoint"])
    fitted = fit_cp_factors(3, 3, 3, 63)[0]
    moved = (trained.products[0].products[0].factor_x.double() - fitted).abs().max().item()
    assert (moved > 1e-4) if trainable else (moved < 1e-6)
    calculator = TACECalculator(summary["checkpoint"], device="cpu")
    atoms = frames_300K[5].copy()
    atoms.calc = calculator
    assert np.isfinite(atoms.get_forces()).all()
