"""Deployable potentials in ``torch.export``'s format (``.pt2``), the successor of TorchScript.

``torch.export`` cannot trace ``torch.autograd.grad`` inside a forward pass, so the function that gives energies,
forces and virials is first traced by ``make_fx`` with symbolic sizes, which records the backward pass as ordinary
ATen operations; that graph is then exported with the number of atoms and of edges dynamic. The file needs PyTorch
alone: ``torch.export.load(path).module()(*inputs)`` with the inputs of :mod:`tace_aiida.model.export` (one
structure per call; the conditions always given) returns ``(energy [1], node_energy [n_atoms], forces [n_atoms, 3],
virial [1, 3, 3], dipole [1, 3], polarizability [1, 3, 3])`` in eV, eV/Å, eV, e Å and Å^3 (zeros for heads the model
lacks). What the file holds is described by the JSON entry ``tace.json`` (atomic numbers, ``r_max``, dtype, heads).

Not covered: the long-range term (its Ewald sum branches on each structure's cell, which a trace would freeze) and
``field_dipole`` models (second derivatives); those export as TorchScript (``.ts``).
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from pathlib import Path

import torch
from torch.export import Dim
from torch.fx.experimental.proxy_tensor import make_fx

from .export import NodeEnergies, tracing_inputs
from .potential import CartesianTensorPotential, apply_strain

Tensor = torch.Tensor
METADATA = "tace.json"
FORMAT_VERSION = 1


class _EnergyForcesVirial(torch.nn.Module):
    """Energy, node energies, forces, virial and the tensor heads of one structure, the derivatives by autograd."""

    def __init__(self, node_energies: torch.nn.Module) -> None:
        super().__init__()
        self.node_energies = node_energies

    def forward(self, positions: Tensor, cell: Tensor, species: Tensor, edge_index: Tensor, shifts: Tensor,
                batch: Tensor, total_charge: Tensor, spin_multiplicity: Tensor, fidelity: Tensor,
                electric_field: Tensor) -> tuple[Tensor, ...]:
        positions = positions.detach().requires_grad_(True)
        strain = torch.zeros_like(cell).requires_grad_(True)
        strained_positions, strained_cell = apply_strain(positions, cell, batch, strain)
        node_energy, _, dipole, polarizability = self.node_energies(
            strained_positions, strained_cell, species, edge_index, shifts, batch, total_charge, spin_multiplicity,
            fidelity, electric_field)
        energy = node_energy.sum().reshape(1)
        position_gradient, strain_gradient = torch.autograd.grad([energy.sum()], [positions, strain])
        return (energy.detach(), node_energy.detach(), -position_gradient.detach(), -strain_gradient.detach(),
                dipole.detach(), polarizability.detach())


@contextlib.contextmanager
def _without_opt_einsum() -> Iterator[None]:
    """opt_einsum picks a contraction order from the concrete sizes, which would fix the number of edges in the
    trace; torch's own order needs no sizes."""
    enabled = torch.backends.opt_einsum.enabled
    torch.backends.opt_einsum.enabled = False
    try:
        yield
    finally:
        torch.backends.opt_einsum.enabled = enabled


def export_program(model: CartesianTensorPotential, path: str | Path) -> Path:
    """Write ``model`` (in its dtype) as a ``torch.export`` file (``.pt2``); ValueError for what it cannot hold."""
    if model.long_range is not None or model.config.field_dipole:
        part = "long-range term" if model.long_range is not None else "field_dipole response"
        raise ValueError(f"a model with a {part} cannot be written with torch.export yet; export it as TorchScript "
                         "(an output file ending in .ts)")
    model = model.eval()
    dtype = next(model.parameters()).dtype
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    inputs = tracing_inputs(model, [[0, 0, 0], [1.1, 0, 0], [0, 1.3, 0.2], [0.9, 1.0, 1.1], [2.0, 0.4, 0.3],
                                    [0.3, 2.1, 1.4]])  # 6 atoms, 30 edges: sizes no other input shares
    function = _EnergyForcesVirial(NodeEnergies(model))
    with _without_opt_einsum():
        traced = make_fx(function, tracing_mode="symbolic", _allow_non_fake_inputs=True)(*inputs)
        atoms, edges = Dim("n_atoms", min=2), Dim("n_edges", min=2)
        shapes = ({0: atoms}, None, {0: atoms}, {1: edges}, {0: edges}, {0: atoms}, None, None, None, None)
        program = torch.export.export(traced, inputs, dynamic_shapes=shapes, strict=False)
    metadata = {"format_version": FORMAT_VERSION, "atomic_numbers": list(model.config.atomic_numbers),
                "r_max": model.config.r_max, "dtype": str(dtype).removeprefix("torch."),
                "dipole_head": bool(model.config.dipole), "polarizability_head": bool(model.config.polarizability)}
    path = Path(path)
    torch.export.save(program, str(path), extra_files={METADATA: json.dumps(metadata)})
    return path


def load_program(path: str | Path) -> tuple[torch.nn.Module, dict]:
    """The callable module of a ``.pt2`` file written by :func:`export_program`, and its metadata."""
    extra = {METADATA: ""}
    program = torch.export.load(str(path), extra_files=extra)
    if not extra[METADATA]:
        raise ValueError(f"{path} is a torch.export file without tace-aiida's {METADATA}: not written by tace-export")
    return program.module(), json.loads(extra[METADATA])
