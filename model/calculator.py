"""ASE calculator for one potential or an ensemble, with the ensemble's uncertainty."""

from __future__ import annotations

import ctypes
import warnings
from collections.abc import Sequence
from dataclasses import fields
from pathlib import Path

import numpy as np
import torch
from ase import Atoms
from ase.calculators.calculator import Calculator, all_changes
from ase.stress import full_3x3_to_voigt_6_stress

from . import keys
from .bias import UncertaintyBias
from .checkpoint import load_model, read_checkpoint
from .data import atoms_to_graph, collate, resolve_device, to_device
from .ensemble import StackedEnsemble, stacking_obstacle
from .feature_uncertainty import FeatureUncertainty
from .potential import CartesianTensorPotential, Outputs
from .structure_conditions import conditions_differ
from .validation import check_ensemble

#: Sources of the force deviation: the members' spread, or each member's feature distance.
UNCERTAINTIES = ("ensemble", "features")

#: ``mallopt`` parameters of glibc's ``malloc.h``.
M_TRIM_THRESHOLD, M_MMAP_MAX = -1, -4


def keep_freed_memory() -> bool:
    """Make glibc keep this process's freed memory for reuse instead of returning it to the OS.

    glibc serves blocks above its mmap threshold (at most 32 MB) with ``mmap`` and unmaps them
    when freed, so every MD step page-faults the model's large per-edge tensors in again
    (``[n_edges, channels, paths]``: 94 MB for 216 Cu atoms in float64, 378 MB stacked for 4
    members), which costs a CPU step about as much as the arithmetic. With ``mmap`` off and the
    heap never trimmed, later steps reuse the same pages; the process keeps its peak memory.
    Returns False where glibc's ``mallopt`` is unavailable.
    """
    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):
        return False
    return bool(mallopt(M_MMAP_MAX, 0)) and bool(mallopt(M_TRIM_THRESHOLD, -1))


def stack_outputs(outputs: Sequence[Outputs]) -> Outputs:
    """Outputs of single models -> one :class:`Outputs` with a leading member axis.

    Descriptors and node features are the first member's only: members of other widths may not stack.
    """
    values = {}
    for field in fields(Outputs):
        parts = [getattr(out, field.name) for out in outputs]
        if field.name in ("descriptors", "node_features"):
            parts = parts[:1]
        values[field.name] = None if parts[0] is None else torch.stack(parts)
    return Outputs(**values)


class TACECalculator(Calculator):
    """Energy (eV), forces (eV/Å) and stress (eV/Å^3, periodic cells) from one or more checkpoints.

    With several checkpoints (an ensemble) the results are the members' means, and these extra
    results measure how much the members disagree:

    * ``energy_std`` (eV) and ``energy_std_per_atom`` (eV/atom): standard deviation of the energy;
    * ``forces_std`` [n_atoms] (eV/Å): per atom, ``sqrt(mean_m |F_m - <F>|^2)``;
    * ``max_force_std`` (eV/Å): the largest of those, DP-GEN's model deviation of a frame;
    * ``stress_std`` (eV/Å^3, periodic cells): largest standard deviation of a stress component.

    ``virial`` (eV, Voigt order xx yy zz yz xz xy), when asked for (``calc.get_property("virial", atoms)``), is
    ``-dE/d(strain)`` for any boundary conditions: ``-stress * volume`` for periodic cells, and also for slabs and
    molecules, which have no stress (for a molecule it equals ``sum_i r_i (x) F_i``). The LAMMPS coupling uses it.

    ``descriptors`` (always computed) are the first member's per-structure means of the invariant
    node features, a fingerprint for diversity selection.

    Models with conditions read them from ``atoms.info`` (``charge``, ``spin``, ``fidelity``,
    ``electric_field``; :func:`~tace_aiida.model.structure_conditions.conditions`), and a change of one is a change of state.

    Models with tensorial heads (or ``field_dipole``) add, for molecules, the members' mean ``dipole`` [3]
    (e Å, about the origin of the coordinates; ``atoms.get_dipole_moment()``) and ``polarizability``
    [3, 3] (Å^3). ``field_dipole`` models give, when asked for them
    (``calc.get_property("born_effective_charges", atoms)``), the polarizability and the Born effective
    charges [n_atoms, 3, 3] (e) as second derivatives of the energy; the Born charges of periodic cells too.

    With ``uncertainty="features"`` the force deviations (``forces_std``, ``max_force_std``) come from
    each member's own features instead (:mod:`~tace_aiida.model.feature_uncertainty`, the expected force
    error in eV/Å, root mean square over members), so one checkpoint is enough; the energy and
    stress deviations stay the members' spread (0 for one member).

    With ``bias`` (:class:`~tace_aiida.model.bias.UncertaintyBias`, an ensemble only) ``energy``, ``forces``,
    ``stress`` and ``virial`` include the uncertainty-driven bias, so MD is pulled towards disagreement;
    ``bias_energy`` (eV) is the bias alone and ``unbiased_energy`` / ``unbiased_forces`` the members' means.

    With ``batched=True`` an ensemble whose members share architecture, species, cutoff and dtype
    is evaluated in one forward pass (:class:`~tace_aiida.model.ensemble.StackedEnsemble`, one
    neighbour list); other ensembles are evaluated member by member, with a warning that says why.
    Both give the same results. The default, ``None``, batches on GPUs only: on a CPU nearly all
    of a step is per-member work (the shared edge geometry is 4-8 % of one member's step), so
    4 members cost about 4x one member either way (``benchmarks/bench_ensemble.py``), and the
    stacked pass needs 4x the memory. For MD on a CPU call :func:`keep_freed_memory` first, as
    ``tace-md`` does.
    """

    implemented_properties = [
        "energy", "free_energy", "energies", "forces", "stress", "virial",
        "energy_std", "energy_std_per_atom", "forces_std", "max_force_std", "stress_std", "descriptors",
        "bias_energy", "unbiased_energy", "unbiased_forces", "dipole", "polarizability", "born_effective_charges",
    ]
    #: Results of ``field_dipole`` models that cost three more backward passes: computed only when asked for.
    FIELD_RESPONSE = ("polarizability", "born_effective_charges")

    def __init__(
        self,
        checkpoints: str | Path | Sequence[str | Path],
        device: str = "auto",
        dtype: str | None = None,
        batched: bool | None = None,
        bias: UncertaintyBias | None = None,
        uncertainty: str = "ensemble",
        **kwargs,
    ) -> None:
        super().__init__(**kwargs)
        paths = [checkpoints] if isinstance(checkpoints, (str, Path)) else list(checkpoints)
        if not paths:
            raise ValueError("TACECalculator needs at least one checkpoint")
        if uncertainty not in UNCERTAINTIES:
            raise ValueError(f"uncertainty must be one of {', '.join(UNCERTAINTIES)}, not {uncertainty!r}")
        self.feature_uncertainties = [load_feature_uncertainty(path) for path in paths] if uncertainty == "features" else None
        if bias is not None and len(paths) < 2:
            raise ValueError(f"an uncertainty bias needs an ensemble of at least 2 checkpoints, not {len(paths)}")
        self.bias = bias
        self.device = resolve_device(device)
        torch_dtype = getattr(torch, dtype) if dtype else None
        self.models = [load_model(path, self.device, torch_dtype)[0] for path in paths]
        check_ensemble({str(path): model.config.to_dict() for path, model in zip(paths, self.models, strict=True)})
        for model in self.models:
            for parameter in model.parameters():
                parameter.requires_grad_(False)
        self.checkpoints = [str(p) for p in paths]
        self.ensemble: StackedEnsemble | None = None
        if batched is None:
            batched = self.device.type != "cpu"
        if batched and len(self.models) > 1:
            obstacle = stacking_obstacle(self.models)
            if obstacle is None:
                self.ensemble = StackedEnsemble(self.models)
            else:
                warnings.warn(f"the ensemble's members are evaluated one by one (slower): {obstacle}", stacklevel=2)

    def check_state(self, atoms: Atoms, tol: float = 1e-15) -> list[str]:
        """ASE's changes, plus ``info`` when a condition (charge, spin, fidelity, electric_field) changed."""
        changes = super().check_state(atoms, tol)
        if self.atoms is not None and not changes and conditions_differ(self.atoms, atoms):
            changes.append("info")
        return changes

    def calculate(self, atoms: Atoms | None = None, properties=None, system_changes=all_changes) -> None:
        super().calculate(atoms, properties, system_changes)
        periodic = bool(self.atoms.pbc.all())
        virial = "virial" in (properties or ())
        strained = periodic or virial
        response = self.models[0].config.field_dipole and bool(set(properties or ()) & set(self.FIELD_RESPONSE))
        if self.ensemble is not None:
            members, species = self._evaluate(self.ensemble, self.atoms, strained, response)
            node_features = list(members.node_features)
        else:
            outputs, species = zip(*(self._evaluate(model, self.atoms, strained, response) for model in self.models),
                                   strict=True)
            node_features = [out.node_features for out in outputs]
            members, species = stack_outputs(outputs), species[0]
        energies = members.energy[:, 0].detach().cpu().double().numpy()
        forces = members.forces.detach().cpu().double().numpy()
        mean_forces = forces.mean(axis=0)
        if self.feature_uncertainties is None:
            forces_std = np.sqrt(((forces - mean_forces) ** 2).sum(axis=-1).mean(axis=0))
        else:
            expected = [fitted.forces_std(features.detach().double(), species).cpu().numpy()
                        for fitted, features in zip(self.feature_uncertainties, node_features, strict=True)]
            forces_std = np.sqrt(np.mean(np.square(expected), axis=0))
        self.results = {
            "energy": float(energies.mean()),
            "free_energy": float(energies.mean()),
            "energies": members.node_energy.detach().cpu().double().numpy().mean(axis=0),
            "forces": mean_forces,
            "energy_std": float(energies.std()),
            "energy_std_per_atom": float(energies.std()) / len(self.atoms),
            "forces_std": forces_std,
            "max_force_std": float(forces_std.max()),
            "descriptors": members.descriptors[0, 0].detach().cpu().double().numpy(),
        }
        for name in ("dipole", "polarizability"):
            values = getattr(members, name)
            if values is not None and not self.atoms.pbc.any():
                self.results[name] = values[:, 0].detach().cpu().double().numpy().mean(axis=0)
        if members.born_charges is not None:
            self.results["born_effective_charges"] = members.born_charges.detach().cpu().double().numpy().mean(axis=0)
        stresses = members.stress[:, 0].detach().cpu().double().numpy() if periodic else None
        if periodic:
            self.results["stress"] = full_3x3_to_voigt_6_stress(stresses.mean(axis=0))
            self.results["stress_std"] = float(stresses.std(axis=0).max())
        virials = members.virial[:, 0].detach().cpu().double().numpy() if virial else None
        if virial:
            self.results["virial"] = full_3x3_to_voigt_6_stress(virials.mean(axis=0))
        if self.bias is not None:
            self._add_bias(energies, forces, stresses, virials)

    def _add_bias(self, energies: np.ndarray, forces: np.ndarray, stresses: np.ndarray | None,
                  virials: np.ndarray | None) -> None:
        """Add the uncertainty bias to energy, forces, stress and virial, keeping the members' means apart."""
        energy, bias_forces, bias_stress = self.bias.terms(energies, forces, stresses)
        self.results.update(bias_energy=energy, unbiased_energy=self.results["energy"],
                            unbiased_forces=self.results["forces"])
        self.results["energy"] = self.results["free_energy"] = self.results["energy"] + energy
        self.results["forces"] = self.results["forces"] + bias_forces
        if bias_stress is not None:
            self.results["stress"] = self.results["stress"] + full_3x3_to_voigt_6_stress(bias_stress)
        if virials is not None:
            bias_virial = self.bias.share(energies, len(self.atoms), virials)
            self.results["virial"] = self.results["virial"] + full_3x3_to_voigt_6_stress(bias_virial)

    def _evaluate(self, model: CartesianTensorPotential | StackedEnsemble, atoms: Atoms, strained: bool,
                  field_response: bool = False) -> tuple[Outputs, torch.Tensor]:
        """Forces, descriptors, node features (with ``strained`` the virial and stress, the field response when
        asked) of ``atoms`` from one model or a stack, and the atoms' species indices ``[n_atoms]``."""
        dtype = next(model.parameters()).dtype
        graph = atoms_to_graph(atoms, model.config.atomic_numbers, model.config.r_max, dtype=dtype)
        batch = to_device(collate([graph]), self.device)
        outputs = model(batch, compute_stress=strained, compute_descriptors=True, compute_field_response=field_response)
        return outputs, batch[keys.SPECIES]


def load_feature_uncertainty(path: str | Path) -> FeatureUncertainty:
    """The fitted feature uncertainty stored in checkpoint ``path``; a clear error for one without."""
    state = read_checkpoint(path).get("feature_uncertainty")
    if state is None:
        raise ValueError(f"checkpoint {path} has no fitted feature uncertainty (trained by an earlier version, "
                         "or without force labels): train it again, or use uncertainty='ensemble'")
    return FeatureUncertainty.from_state(state)
