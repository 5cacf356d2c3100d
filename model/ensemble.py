"""An ensemble of potentials evaluated in one forward pass, with a member axis on every weight.

The members' parameters are stacked into ``[members, ...]`` tensors and the first member's
module runs on them through :func:`torch.func.functional_call`; every block broadcasts over
leading member axes (see :mod:`tace_aiida.model.blocks`). The neighbour list is built once,
positions are given one copy per member so that one backward pass yields every member's own
forces and stress, and the coupling constants are shared. Members must share the architecture,
species, cutoff, dtype and device; data statistics (E0s, scale, shift, mean neighbour count)
may differ and are stacked too.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import fields

import torch
from torch import nn
from torch.func import functional_call, stack_module_state

from . import keys
from .potential import CartesianTensorPotential, ModelConfig, Outputs

Tensor = torch.Tensor

#: Settings that depend on the training data; members may differ in them.
STATISTICS = {"atomic_energies", "avg_num_neighbors", "scale", "shift"}


def stacking_obstacle(models: Sequence[CartesianTensorPotential]) -> str | None:
    """Why ``models`` cannot be evaluated as one stacked ensemble, or None if they can."""
    first = models[0]
    dtype, device = next(first.parameters()).dtype, next(first.parameters()).device
    architecture = [f.name for f in fields(ModelConfig) if f.name not in STATISTICS]
    for index, model in enumerate(models[1:], start=1):
        for name in architecture:
            if getattr(model.config, name) != getattr(first.config, name):
                return (
                    f"member {index} has {name}={getattr(model.config, name)!r}, "
                    f"member 0 has {getattr(first.config, name)!r}"
                )
        parameter = next(model.parameters())
        if (parameter.dtype, parameter.device) != (dtype, device):
            return f"member {index} is {parameter.dtype} on {parameter.device}, member 0 is {dtype} on {device}"
    return None


class StackedEnsemble(nn.Module):
    """``members`` potentials as one module whose outputs carry a leading ``[members]`` axis.

    ``forward`` takes the same batch dict as :class:`CartesianTensorPotential` and returns its
    :class:`Outputs` with energies ``[members, n_graphs]`` (eV), forces ``[members, n_atoms, 3]``
    (eV/Å), virial ``[members, n_graphs, 3, 3]`` (eV), stress (eV/Å^3) and descriptors
    ``[members, n_graphs, features]``, equal to evaluating the members one by one.
    """

    def __init__(self, members: Sequence[CartesianTensorPotential]) -> None:
        super().__init__()
        obstacle = stacking_obstacle(members)
        if obstacle is not None:
            raise ValueError(f"these potentials cannot be stacked into one ensemble: {obstacle}")
        self.template = members[0]
        self.num_members = len(members)
        parameters, buffers = stack_module_state(list(members))
        self.stacked = {name: value.detach() for name, value in parameters.items()}
        for name, value in buffers.items():
            shared = all(torch.equal(value[0], other) for other in value[1:])
            self.stacked[name] = value[0] if shared else value

    @property
    def config(self) -> ModelConfig:
        """The first member's settings (architecture, species and cutoff are common to all)."""
        return self.template.config

    def forward(self, batch: dict[str, Tensor], compute_stress: bool = False, compute_descriptors: bool = False,
                compute_field_response: bool = False) -> Outputs:
        """Energies, forces (and stress, descriptors, field response) of every member for ``batch``."""
        positions = batch[keys.POSITIONS].detach()
        per_member = {**batch, keys.POSITIONS: positions.expand(self.num_members, *positions.shape).contiguous()}
        return functional_call(
            self.template,
            self.stacked,
            (per_member,),
            {"compute_forces": True, "compute_stress": compute_stress, "compute_descriptors": compute_descriptors,
             "compute_field_response": compute_field_response},
        )
