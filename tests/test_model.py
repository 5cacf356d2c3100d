"""The potential outside the physics suite: float32 against float64, and errors that name the cause.

Symmetries, derivatives, smoothness, batching and extensivity of every model configuration are
in ``test_model_physics.py``.
"""

from __future__ import annotations

import pytest
import torch
from ase import Atoms
from tace_aiida.model.checkpoint import load_model, save_checkpoint
from tace_aiida.model.data import atoms_to_graph, collate
from tace_aiida.model.potential import ModelConfig

from .conftest import SPECIES_3BPA, default_dtype, small_model


def test_float32_agrees_with_float64(frames_300K):
    with default_dtype(torch.float64):
        reference = small_model(seed=5)
    with default_dtype(torch.float32):
        single = small_model(seed=5)
    single.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in reference.state_dict().items()})
    atoms = frames_300K[3]
    e64 = reference(collate([atoms_to_graph(atoms, SPECIES_3BPA, 5.0, dtype=torch.float64)]))
    e32 = single(collate([atoms_to_graph(atoms, SPECIES_3BPA, 5.0, dtype=torch.float32)]))
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


def test_sqrt_message_normalization_divides_the_neighbour_sum_by_the_root_of_the_mean_count(frames_300K):
    """The same weights: the first interaction's output with ``sqrt`` (the default) is sqrt(avg_num_neighbors) =
    sqrt(15) times that with ``mean``; an unknown value is refused by name."""
    batch = collate([atoms_to_graph(frames_300K[0], SPECIES_3BPA, 5.0, dtype=torch.float64)])
    outputs = {}
    for mode in ("mean", "sqrt"):
        with default_dtype(torch.float64):
            model = small_model(seed=2, message_normalization=mode)
        model.interactions[0].register_forward_hook(lambda module, inputs, output, mode=mode: outputs.update({mode: output}))
        model(batch)
    assert torch.allclose(outputs["sqrt"], 15.0**0.5 * outputs["mean"], rtol=1e-12, atol=0)
    with pytest.raises(ValueError, match="message_normalization='median' must be one of"):
        ModelConfig(atomic_numbers=[1], atomic_energies=[0.0], message_normalization="median")


def test_a_checkpoint_saved_before_message_normalization_existed_loads_with_mean(tmp_path, frames_300K):
    """Older checkpoints have no ``message_normalization``; they were trained dividing by the mean neighbour
    count, so they must load that way, not with today's default, and give the energies they gave."""
    with default_dtype(torch.float64):
        model = small_model(seed=3, message_normalization="mean")
    path = save_checkpoint(tmp_path / "old.pt", model)
    payload = torch.load(path, weights_only=True)
    del payload["model_config"]["message_normalization"]
    torch.save(payload, path)
    loaded, _ = load_model(path)
    assert loaded.config.message_normalization == "mean"
    assert ModelConfig(atomic_numbers=[1], atomic_energies=[0.0]).message_normalization == "sqrt"
    batch = collate([atoms_to_graph(frames_300K[0], SPECIES_3BPA, 5.0, dtype=torch.float64)])
    assert torch.equal(loaded(batch).energy, model.eval()(batch).energy)


def test_fixed_bessel_frequencies_are_no_weights_and_follow_the_evaluation_dtype():
    """Fixed frequencies are ``n pi / r_max``, built in the dtype of the edge lengths, so a float32 model
    evaluated in float64 keeps them exact; trained ones are weights."""
    with default_dtype(torch.float32):
        fixed, trained = small_model(seed=1, bessel_trainable=False), small_model(seed=1)
    assert not any("frequencies" in name for name, _ in fixed.named_parameters())
    assert any("frequencies" in name for name, _ in trained.named_parameters())
    basis = fixed.to(torch.float64).radial_embedding.basis
    lengths = torch.tensor([0.7, 1.9, 4.2], dtype=torch.float64)
    n = torch.arange(1, basis.num_basis + 1, dtype=torch.float64)
    expected = (2.0 / basis.r_max) ** 0.5 * torch.sin(n * torch.pi / basis.r_max * lengths[:, None]) / lengths[:, None]
    assert torch.allclose(basis(lengths), expected, rtol=1e-14, atol=0)
