"""Deployable potentials in ``torch.export``'s format (``.pt2``), the successor of TorchScript.

``torch.export`` cannot trace ``torch.autograd.grad`` inside a forward pass, so the function that gives energies,
forces and virials is first traced by ``make_fx`` with symbolic sizes, which records the backward pass as ordinary
ATen operations; that graph is then exported with the number of atoms and of edges dynamic. The file needs PyTorch
alone: ``torch.export.load(path).module()(*inputs)`` with the inputs of :mod:`tace_aiida.model.export` (one
structure per call; the conditions always given) returns ``(energy [1], node_energy [n_atoms], forces [n_atoms, 3],
virial [1, 3, 3], dipole [1, 3], polarizability [1, 3, 3])`` in eV, eV/Å, eV, e Å and Å^3 (zeros for heads the model
lacks; a ``field_dipole`` model's dipole is ``-dE/dF``). What the file holds is described by the JSON entry
``tace.json`` (atomic numbers, ``r_max``, dtype, heads, the long-range term's settings).

A model with the long-range term takes two more inputs, since which atoms pair up and which wave vectors enter the
Ewald sum depend on the structure in ways a trace cannot follow: ``pairs`` ``[2, n_pairs]`` (int64, every pair
``i < j`` of a molecule, none for a periodic cell) and ``wave_vectors`` ``[n_k, 3]`` (in the file's dtype: the
integer triples ``n`` of the reciprocal lattice vectors ``k = 2 pi n inv(cell)^T`` with ``0 < |k| <= k_max``, one of
each pair ``+-k``, the first nonzero entry of ``n`` positive; none for a molecule), ``k_max`` and ``sigma`` in
``tace.json``. Not covered: a ``field_dipole`` model's polarizability and Born charges (second derivatives), which
the TorchScript file (``.ts``) gives.

``tace-export --compile`` also puts into the file the same program compiled by AOTInductor (C++ for the CPU it was
written on), which ``torch._inductor.aoti_load_package(path)`` loads and runs with the same inputs and outputs; the
portable program stays in the file for ``torch.export.load``. The file is then written by torch's PT2 archive
writer (``package_pt2``, the function behind ``torch.export.save``, which can hold both programs).
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable, Iterator
from pathlib import Path

import torch
from torch.export import Dim
from torch.fx.experimental.proxy_tensor import make_fx

from .export import NodeEnergies, tracing_inputs
from .long_range import pair_potential, self_potential, wave_potential
from .potential import CartesianTensorPotential, apply_strain

Tensor = torch.Tensor
METADATA = "tace.json"
FORMAT_VERSION = 1
#: Positions (Å) of the structure the programs are traced with: 6 atoms and 30 edges, sizes no other input shares.
TRACING_POSITIONS = [[0, 0, 0], [1.1, 0, 0], [0, 1.3, 0.2], [0.9, 1.0, 1.1], [2.0, 0.4, 0.3], [0.3, 2.1, 1.4]]


class _EnergyForcesVirial(torch.nn.Module):
    """Energy, node energies, forces, virial and the tensor heads of one structure, the derivatives by autograd;
    with a long-range term, its ``pairs`` and ``wave_vectors`` as the last inputs."""

    def __init__(self, node_energies: NodeEnergies) -> None:
        super().__init__()
        self.node_energies = node_energies
        model = node_energies.model
        self.field_dipole = model.config.field_dipole
        self.sigma = model.long_range.sigma if model.long_range is not None else 0.0

    def forward(self, positions: Tensor, cell: Tensor, species: Tensor, edge_index: Tensor, shifts: Tensor,
                batch: Tensor, total_charge: Tensor, spin_multiplicity: Tensor, fidelity: Tensor,
                electric_field: Tensor, *long_range: Tensor) -> tuple[Tensor, ...]:
        positions = positions.detach().requires_grad_(True)
        strain = torch.zeros_like(cell).requires_grad_(True)
        if self.field_dipole:
            electric_field = electric_field.detach().requires_grad_(True)
        strained_positions, strained_cell = apply_strain(positions, cell, batch, strain)
        node_energy, charges, dipole, polarizability = self.node_energies(
            strained_positions, strained_cell, species, edge_index, shifts, batch, total_charge, spin_multiplicity,
            fidelity, electric_field)
        if long_range:
            node_energy = node_energy + electrostatic_energies(strained_positions, charges, strained_cell[0],
                                                               *long_range, self.sigma)
        energy = node_energy.sum().reshape(1)
        wrt = [positions, strain, electric_field] if self.field_dipole else [positions, strain]
        gradients = torch.autograd.grad([energy.sum()], wrt)
        if self.field_dipole:
            dipole = -gradients[2]
        return (energy.detach(), node_energy.detach(), -gradients[0].detach(), -gradients[1].detach(),
                dipole.detach(), polarizability.detach())


def electrostatic_energies(positions: Tensor, charges: Tensor, cell: Tensor, pairs: Tensor, wave_vectors: Tensor,
                           sigma: float) -> Tensor:
    """:func:`.long_range.electrostatic_energies` of one structure with its ``pairs`` and ``wave_vectors`` given
    (module docstring): per-atom energies ``[n_atoms]`` (eV) of Gaussian ``charges`` ``[n_atoms]`` (e) at
    ``positions`` ``[n_atoms, 3]`` (Å) in ``cell`` ``[3, 3]`` (Å, zeros for a molecule). Both sums are always
    formed (one of them over nothing), so the traced graph holds no branch on the cell; a molecule's zero cell is
    replaced by the unit cell, which its zero wave vectors never use, so no gradient passes through its inverse."""
    periodic = (cell.abs().sum() > 0).to(positions.dtype)
    unit_cell = torch.diag_embed(torch.ones_like(cell[0]))  # not torch.eye: a trace would fix its device
    usable_cell = torch.where(periodic > 0, cell, unit_cell)
    potential = (pair_potential(positions, charges, pairs, sigma)
                 + wave_potential(positions, charges, usable_cell, wave_vectors, sigma)
                 - periodic * self_potential(charges, sigma))
    return 0.5 * charges * potential


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


def graph_input_shapes() -> tuple:
    """The dynamic sizes of the ten inputs of :func:`.export.tracing_inputs` for ``torch.export``: the number of
    atoms and the number of edges."""
    atoms, edges = Dim("n_atoms", min=1), Dim("n_edges", min=0)
    return ({0: atoms}, None, {0: atoms}, {1: edges}, {0: edges}, {0: atoms}, None, None, None, None)


def export_program(model: CartesianTensorPotential, path: str | Path, compiled: bool = False) -> Path:
    """Write ``model`` (in its dtype) as a ``torch.export`` file (``.pt2``); with ``compiled``, the same file also
    holds the program compiled by AOTInductor for the model's device (a C++ compiler is needed here, and the
    compiled part runs only with this torch version on a like machine; the portable program beside it runs anywhere)."""
    model = model.eval()
    dtype = next(model.parameters()).dtype
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    inputs = tracing_inputs(model, TRACING_POSITIONS)
    shapes = graph_input_shapes()
    metadata = {"format_version": FORMAT_VERSION, "atomic_numbers": list(model.config.atomic_numbers),
                "r_max": model.config.r_max, "dtype": str(dtype).removeprefix("torch."),
                "dipole_head": bool(model.config.dipole), "polarizability_head": bool(model.config.polarizability),
                "field_dipole": bool(model.config.field_dipole)}
    if model.long_range is not None:
        pairs = torch.triu_indices(6, 6, offset=1)[:, :11].contiguous()  # 11 pairs and 7 wave vectors: sizes of their own
        wave_vectors = torch.tensor([[1, 0, 0], [0, 1, 0], [0, 0, 1], [1, 1, 0], [1, -1, 0], [0, 1, 1], [1, 0, 1]],
                                    dtype=dtype)
        inputs = (*inputs, pairs, wave_vectors)
        shapes = (*shapes, {1: Dim("n_pairs", min=0)}, {0: Dim("n_wave_vectors", min=0)})
        metadata["long_range"] = {"sigma": model.long_range.sigma, "k_max": model.long_range.k_max}
    program = trace_program(_EnergyForcesVirial(NodeEnergies(model)), inputs, shapes)
    path = Path(path)
    if not compiled:
        torch.export.save(program, str(path), extra_files={METADATA: json.dumps(metadata)})
        return path
    metadata["compiled_for"] = next(model.parameters()).device.type
    return write_compiled_program(program, inputs, path, {METADATA: json.dumps(metadata)})


def trace_program(function: torch.nn.Module, inputs: tuple[Tensor, ...], shapes: tuple) -> torch.export.ExportedProgram:
    """``function``, whose forward may call ``torch.autograd.grad``, traced by ``make_fx`` with symbolic sizes (the
    backward pass becomes ordinary operations) and exported with the dynamic sizes ``shapes`` of its ``inputs``."""
    with _without_opt_einsum():
        traced = make_fx(function, tracing_mode="symbolic", _allow_non_fake_inputs=True)(*inputs)
        return torch.export.export(traced, inputs, dynamic_shapes=shapes, strict=False)


def write_compiled_program(program: torch.export.ExportedProgram, inputs: tuple[Tensor, ...], path: str | Path,
                           extra_files: dict[str, str]) -> Path:
    """Write ``program`` and its AOTInductor compilation for the device of ``inputs`` into one ``.pt2`` file at
    ``path`` with ``extra_files``; ``torch._inductor.aoti_load_package(path)`` runs the compiled one."""
    from torch.export.pt2_archive._package import package_pt2  # here: a private module only newer torch versions have

    compiled_files = torch._inductor.aot_compile(program.module(), inputs, options={"aot_inductor.package": True})
    package_pt2(str(path), exported_programs={"model": program}, aoti_files={"model": compiled_files},
                extra_files=extra_files)
    return Path(path)


def load_program(path: str | Path, device: str = "cpu", compiled: bool | None = None) -> tuple[Callable, dict]:
    """The callable of a ``.pt2`` file written by :func:`export_program` on ``device``, and the file's metadata.

    ``compiled``: None takes the AOTInductor program when the file holds one for ``device``'s type, else the portable
    one; True insists on the compiled one (ValueError if the file has none for that device), False on the portable."""
    extra = {METADATA: ""}
    program = torch.export.load(str(path), extra_files=extra)
    if not extra[METADATA]:
        raise ValueError(f"{path} is a torch.export file without tace-aiida's {METADATA}: not written by tace-export")
    metadata = json.loads(extra[METADATA])
    has_compiled = metadata.get("compiled_for") == torch.device(device).type
    if compiled and not has_compiled:
        held = f"one compiled for {metadata['compiled_for']}" if "compiled_for" in metadata else "no compiled program"
        raise ValueError(f"{path} holds {held}, not one for {device}: write it with tace-export --compile on such a device")
    if has_compiled and compiled is not False:
        return torch._inductor.aoti_load_package(str(path)), metadata
    return program.module().to(device), metadata
