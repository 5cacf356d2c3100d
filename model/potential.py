"""The Cartesian-tensor potential: embedding, interaction + product layers, readouts, derivatives."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields

import torch
from torch import nn

from . import keys
from .blocks import EdgeHarmonics, InteractionBlock, LinearReadout, MLPReadout, ProductBasisBlock, SpeciesLinear
from .conditions import ConditionEmbedding, field_response, ion_field_energy
from .constants import ConstantsModule
from .decomposed_blocks import DecomposedInteractionBlock, DecomposedProductBasisBlock
from .decomposition import default_cp_rank
from .long_range import LatentEwald
from .radial import RadialEmbedding
from .tensor_outputs import TensorReadouts

Tensor = torch.Tensor


#: How each atom's sum of messages is normalised: by the mean number of neighbours, or its square root.
MESSAGE_NORMALIZATIONS = ("mean", "sqrt")


@dataclass
class ModelConfig:
    """Hyperparameters and data statistics that fully define a potential (stored in checkpoints).

    ``atomic_energies`` are the per-species reference energies E0 (eV) in the order of
    ``atomic_numbers``; ``scale`` (eV) and ``shift`` (eV/atom) map the network output to the
    interaction energy per atom.
    ``long_range`` adds the electrostatic energy of latent charges (:mod:`.long_range`) read from
    the rank-0 features of every layer by an MLP of ``readout_mlp`` hidden sizes; ``long_range_sigma``
    is the Gaussian width of the charges (Å), ``long_range_spacing`` the real-space resolution of
    the Ewald sum of periodic cells (Å).
    ``dipole`` and ``polarizability`` add those outputs (:mod:`.tensor_outputs`); the last layer then
    keeps features up to rank 1 or 2.
    ``embed_charge``, ``embed_spin``, ``num_fidelities`` (> 1: that many levels of theory) and
    ``embed_field`` make the total charge, spin multiplicity, fidelity and electric field of a
    structure inputs of the model (:mod:`.conditions`). ``field_dipole`` (with ``embed_field``, instead
    of the ``dipole`` head) makes the dipole the field derivative ``-dE/dF`` (e Å), so it is trained
    on and predicted consistently with the energy in a field.
    ``tensor_decomposition`` replaces every multi-path product by a CP decomposition of rank
    ``cp_rank`` (0: ``7 max_edge_rank**2``) with one weight for all paths (TDN, :mod:`.decomposition`);
    ``cp_trainable`` trains the CP factors instead of keeping them at their fit to the exact product.
    ``bessel_trainable`` trains the frequencies of the radial Bessel basis; false keeps them at ``n pi / r_max``,
    as mace-torch does (on 3BPA's 450 frames 3-9 % lower errors, on 19-40 Cu frames 1-9 % higher: README).
    ``message_normalization`` divides each atom's sum of messages by the square root of ``avg_num_neighbors``
    (``sqrt``, the default: the scale of a sum of that many uncorrelated messages, which keeps the many-body
    features of the product basis from vanishing) or by ``avg_num_neighbors`` itself (``mean``, as MACE does,
    and as checkpoints saved before the option existed do).
    """

    atomic_numbers: list[int]
    atomic_energies: list[float]
    r_max: float = 5.0
    num_bessel: int = 8
    envelope_p: int = 5
    bessel_trainable: bool = True
    radial_mlp: tuple[int, ...] = (64, 64, 64)
    channels: int = 32
    max_edge_rank: int = 3
    max_hidden_rank: int = 1
    correlation: int = 3
    num_interactions: int = 2
    readout_mlp: tuple[int, ...] = (16,)
    avg_num_neighbors: float = 1.0
    scale: float = 1.0
    shift: float = 0.0
    long_range: bool = False
    long_range_sigma: float = 1.0
    long_range_spacing: float = 2.0
    dipole: bool = False
    polarizability: bool = False
    embed_charge: bool = False
    embed_spin: bool = False
    num_fidelities: int = 0
    embed_field: bool = False
    field_dipole: bool = False
    tensor_decomposition: bool = False
    cp_rank: int = 0
    cp_trainable: bool = False
    message_normalization: str = "sqrt"

    def __post_init__(self) -> None:
        if len(self.atomic_energies) != len(self.atomic_numbers):
            raise ValueError(
                f"{len(self.atomic_energies)} atomic energies given for {len(self.atomic_numbers)} species"
            )
        if not 0 <= self.max_hidden_rank <= self.max_edge_rank:
            raise ValueError(f"max_hidden_rank={self.max_hidden_rank} must lie in 0..max_edge_rank={self.max_edge_rank}")
        if self.correlation < 1 or self.num_interactions < 1:
            raise ValueError(f"correlation={self.correlation} and num_interactions={self.num_interactions} must be >= 1")
        if self.cp_rank < 0:
            raise ValueError(f"cp_rank={self.cp_rank} must be >= 0 (0: 7 * max_edge_rank**2)")
        if self.num_fidelities < 0:
            raise ValueError(f"num_fidelities={self.num_fidelities} must be >= 0")
        if self.field_dipole and (not self.embed_field or self.dipole):
            raise ValueError(f"field_dipole: true takes the dipole as -dE/dF: it needs embed_field: true (not "
                             f"{self.embed_field}) and no dipole head (dipole: {self.dipole})")
        if self.message_normalization not in MESSAGE_NORMALIZATIONS:
            raise ValueError(f"message_normalization={self.message_normalization!r} must be one of {MESSAGE_NORMALIZATIONS}")
        if self.long_range_sigma <= 0 or self.long_range_spacing <= 0:
            raise ValueError(
                f"long_range_sigma={self.long_range_sigma} and long_range_spacing={self.long_range_spacing} must be > 0 (Å)"
            )
        self.radial_mlp = tuple(self.radial_mlp)
        self.readout_mlp = tuple(self.readout_mlp)

    @property
    def message_divisor(self) -> float:
        """What each atom's sum of messages is divided by (``message_normalization``)."""
        return self.avg_num_neighbors if self.message_normalization == "mean" else math.sqrt(self.avg_num_neighbors)

    def to_dict(self) -> dict:
        """Plain types only (lists, numbers), safe for ``torch.load(weights_only=True)``."""
        data = asdict(self)
        data["radial_mlp"] = list(self.radial_mlp)
        data["readout_mlp"] = list(self.readout_mlp)
        return data

    @classmethod
    def from_dict(cls, data: dict) -> ModelConfig:
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown model settings {sorted(unknown)}; known are {sorted(known)}")
        return cls(**data)


def apply_strain(positions: Tensor, cell: Tensor, graph_of_atom: Tensor, strain: Tensor) -> tuple[Tensor, Tensor]:
    """Positions ``[..., n_atoms, 3]`` and cells ``[..., n_graphs, 3, 3]`` deformed by the symmetric
    part of ``strain`` ``[..., n_graphs, 3, 3]``: the variable whose energy derivative is the virial."""
    symmetric = 0.5 * (strain + strain.transpose(-1, -2))
    positions = positions + torch.einsum("...ni,...nij->...nj", positions, symmetric.index_select(-3, graph_of_atom))
    return positions, cell + cell @ symmetric


@dataclass
class Outputs:
    """What :class:`CartesianTensorPotential` returns for a batch of ``n_graphs`` structures."""

    energy: Tensor
    node_energy: Tensor
    forces: Tensor | None = None
    virial: Tensor | None = None
    stress: Tensor | None = None
    descriptors: Tensor | None = None
    node_features: Tensor | None = None
    dipole: Tensor | None = None
    polarizability: Tensor | None = None
    born_charges: Tensor | None = None


class CartesianTensorPotential(ConstantsModule):
    """E(3)-equivariant message-passing potential on irreducible Cartesian tensors.

    Input is a batch dict (:mod:`tace_aiida.model.data`, keys in :mod:`tace_aiida.model.keys`): ``positions`` [n_atoms, 3] Å,
    ``species`` [n_atoms] indices into ``config.atomic_numbers``, ``edge_index`` [2, n_edges]
    (sender, receiver), ``shifts`` [n_edges, 3] integer cell shifts, ``cell`` [n_graphs, 3, 3] Å,
    ``batch`` [n_atoms] graph index of each atom.
    """

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        num_species = len(config.atomic_numbers)
        channels = config.channels
        self.register_constant("atomic_energies", torch.tensor(config.atomic_energies, dtype=torch.float64))
        self.register_constant("atomic_numbers", torch.tensor(config.atomic_numbers, dtype=torch.long))
        # shape [1], not []: an unsqueezed 0-d constant is what AOTInductor fails to compile
        self.register_constant("scale", torch.tensor([config.scale], dtype=torch.float64))
        self.register_constant("shift", torch.tensor([config.shift], dtype=torch.float64))
        self.embedding = nn.Linear(num_species, channels, bias=False)
        conditioned = config.embed_charge or config.embed_spin or config.num_fidelities > 1 or config.embed_field
        self.conditions = (
            ConditionEmbedding(channels, num_species, config.embed_charge, config.embed_spin, config.num_fidelities,
                               config.embed_field)
            if conditioned
            else None
        )
        self.radial_embedding = RadialEmbedding(config.r_max, config.num_bessel, config.envelope_p, config.bessel_trainable)
        self.harmonics = EdgeHarmonics(config.max_edge_rank)
        self.interactions = nn.ModuleList()
        self.products = nn.ModuleList()
        self.mixers = nn.ModuleList()
        self.residuals = nn.ModuleList()
        self.readouts = nn.ModuleList()
        node_rank = 1 if config.embed_field else 0
        tensor_rank = 2 if config.polarizability else 1 if config.dipole else 0
        layer_ranks = []
        for layer in range(config.num_interactions):
            last = layer == config.num_interactions - 1
            out_rank = tensor_rank if last else config.max_hidden_rank
            interaction_settings = (
                node_rank, config.max_edge_rank, channels, config.num_bessel, config.radial_mlp, config.message_divisor
            )
            product_settings = (config.max_edge_rank, out_rank, config.correlation, channels, num_species)
            if config.tensor_decomposition:
                cp = (config.cp_rank or default_cp_rank(config.max_edge_rank), config.cp_trainable)
                self.interactions.append(DecomposedInteractionBlock(*interaction_settings, *cp))
                self.products.append(DecomposedProductBasisBlock(*product_settings, *cp))
            else:
                self.interactions.append(InteractionBlock(*interaction_settings))
                self.products.append(ProductBasisBlock(*product_settings))
            self.mixers.append(SpeciesLinear(out_rank, channels, channels, num_species))
            self.residuals.append(SpeciesLinear(min(node_rank, out_rank), channels, channels, num_species))
            self.readouts.append(MLPReadout(channels, config.readout_mlp) if last else LinearReadout(channels))
            node_rank = out_rank
            layer_ranks.append(out_rank)
        self.tensor_readouts = (
            TensorReadouts(channels, layer_ranks, config.dipole, config.polarizability) if tensor_rank else None
        )
        self.long_range = (
            LatentEwald(
                channels * config.num_interactions, config.readout_mlp, config.long_range_sigma, config.long_range_spacing
            )
            if config.long_range
            else None
        )

    def node_energies(
        self, positions: Tensor, cell: Tensor, species: Tensor, edge_index: Tensor, shifts: Tensor, graph_of_atom: Tensor,
        conditions: dict[str, Tensor] | None = None, long_range: bool = True,
    ) -> tuple[Tensor, Tensor]:
        """Per-atom energies ``[..., n_atoms]`` (eV, E0s and, unless ``long_range`` is False, the long-range term
        included) and the rank-0 node features of every layer ``[..., n_atoms, channels * num_interactions]``;
        inputs as in the batch dict, ``conditions`` its entries :data:`.keys.CONDITIONS` (absent ones take their
        neutral values)."""
        self.check_fidelity(conditions or {})
        node_energy, invariants, _ = self.propagate(positions, cell, species, edge_index, shifts, graph_of_atom, conditions,
                                                    long_range)
        return node_energy, invariants

    def propagate(
        self, positions: Tensor, cell: Tensor, species: Tensor, edge_index: Tensor, shifts: Tensor, graph_of_atom: Tensor,
        conditions: dict[str, Tensor] | None = None, long_range: bool = True,
    ) -> tuple[Tensor, Tensor, list[Tensor]]:
        """:meth:`node_energies` and the node features of every layer, ``[..., n_atoms, channels, D_layer]``."""
        conditions = self.complete_conditions(conditions or {}, cell.shape[-3], positions)
        sender, receiver = edge_index[0], edge_index[1]
        offsets = torch.einsum("ei,...eij->...ej", shifts, cell[..., graph_of_atom[receiver], :, :])
        vectors = positions[..., sender, :] - positions[..., receiver, :] + offsets
        lengths = vectors.norm(dim=-1)
        harmonics = self.harmonics(vectors / lengths[..., None])
        radial = self.radial_embedding(lengths)

        one_hot = nn.functional.one_hot(species, len(self.config.atomic_numbers)).to(positions.dtype)
        features = (one_hot @ self.embedding.weight.mT)[..., None]
        if self.conditions is not None:
            invariant = self.conditions.invariant(conditions[keys.TOTAL_CHARGE], conditions[keys.SPIN_MULTIPLICITY],
                                                  conditions[keys.FIDELITY], graph_of_atom)
            if invariant is not None:
                features = features + invariant[..., None]
            if self.conditions.field:
                vector = self.conditions.vector(conditions[keys.ELECTRIC_FIELD], species, graph_of_atom)
                features = torch.cat([features.expand(*vector.shape[:-1], 1), vector], dim=-1)
        node_energy = torch.zeros_like(positions[..., 0])
        invariants, layer_features = [], []
        for interaction, product, mixer, residual, readout in zip(
            self.interactions, self.products, self.mixers, self.residuals, self.readouts, strict=True
        ):
            aggregated = interaction(features, harmonics, radial, edge_index)
            updated = mixer(product(aggregated, species), one_hot)
            shared = residual.linear.component_rank.shape[0]
            skip = residual(features[..., :shared], one_hot)
            features = torch.cat([updated[..., :shared] + skip, updated[..., shared:]], dim=-1)
            node_energy = node_energy + readout(features)
            invariants.append(features[..., 0])
            layer_features.append(features)
        node_energy = self.scale * node_energy + self.shift + self.atomic_energies[..., species]
        invariants = torch.cat(invariants, dim=-1)
        if self.long_range is not None and long_range:
            node_energy = node_energy + self.long_range(invariants, positions, cell, graph_of_atom,
                                                        conditions[keys.TOTAL_CHARGE])
        if self.conditions is not None and self.conditions.field:
            node_energy = node_energy + ion_field_energy(conditions[keys.TOTAL_CHARGE], conditions[keys.ELECTRIC_FIELD],
                                                         positions, graph_of_atom)
        return node_energy, invariants, layer_features

    def complete_conditions(self, conditions: dict[str, Tensor], num_graphs: int, like: Tensor) -> dict[str, Tensor]:
        """``conditions`` with the absent ones at their neutral values (charge 0, singlet, fidelity 0, no field)."""
        neutral = {
            keys.TOTAL_CHARGE: like.new_zeros(num_graphs), keys.SPIN_MULTIPLICITY: like.new_ones(num_graphs),
            keys.FIDELITY: torch.zeros(num_graphs, dtype=torch.long, device=like.device),
            keys.ELECTRIC_FIELD: like.new_zeros(num_graphs, 3),
        }
        return neutral | {key: value for key, value in conditions.items() if key in neutral}

    def check_fidelity(self, conditions: dict[str, Tensor]) -> None:
        """An error for a fidelity the model was not trained with. Done at the entry points, not in
        :meth:`propagate`, which exported files trace: the check reads a value back to the host."""
        if keys.FIDELITY not in conditions or self.conditions is None or self.conditions.fidelity_weights is None:
            return
        levels = max(self.config.num_fidelities, 1)
        highest = int(conditions[keys.FIDELITY].max())  # a host sync, only for multi-fidelity models
        if highest >= levels:
            raise ValueError(f"fidelity {highest} is not one of the model's {levels} levels (0..{levels - 1})")

    def forward(
        self,
        batch: dict[str, Tensor],
        compute_forces: bool = True,
        compute_stress: bool = False,
        compute_descriptors: bool = False,
        training: bool = False,
        compute_field_response: bool = False,
    ) -> Outputs:
        """Energies (eV), forces = -dE/dR (eV/Å), virial = -dE/de (eV), stress = (dE/de)/V (eV/Å^3).

        ``training=True`` keeps the graph of the derivatives so a force loss can be backpropagated.
        ``compute_descriptors`` adds per-structure means of the rank-0 node features of every layer,
        ``[n_graphs, channels * num_interactions]``: invariant fingerprints for selection, and the per-atom
        features they average, ``node_features`` ``[n_atoms, channels * num_interactions]``.
        Models with tensorial heads also return ``dipole`` ``[n_graphs, 3]`` (e Å) and/or
        ``polarizability`` ``[n_graphs, 3, 3]`` (Å^3). A ``field_dipole`` model returns ``dipole`` = -dE/dF,
        and with ``compute_field_response`` the polarizability ``d mu/dF`` and (with forces) the Born effective
        charges ``born_charges`` ``[n_atoms, 3, 3]`` (e) as second derivatives (:func:`.conditions.field_response`).

        Positions ``[..., n_atoms, 3]`` with leading member axes (one copy per ensemble member,
        matching weights stacked as ``[members, ...]``) give every output those leading axes.
        """
        leaf_positions = batch[keys.POSITIONS]
        if compute_forces and not leaf_positions.requires_grad:
            leaf_positions = leaf_positions.detach().requires_grad_(True)
        positions, cell = leaf_positions, batch[keys.CELL]
        members = positions.shape[:-2]
        graph_of_atom = batch[keys.BATCH]
        num_graphs = cell.shape[0]
        strain = None
        if compute_stress:
            strain = torch.zeros(*members, *cell.shape, dtype=cell.dtype, device=cell.device, requires_grad=True)
            positions, cell = apply_strain(positions, cell, graph_of_atom, strain)

        conditions = {key: batch[key] for key in keys.CONDITIONS if key in batch}
        self.check_fidelity(conditions)
        field = None
        if self.config.field_dipole:
            given = conditions.get(keys.ELECTRIC_FIELD, cell.new_zeros(num_graphs, 3))
            field = given.to(positions.dtype).expand(*members, num_graphs, 3).clone().requires_grad_(True)
            conditions[keys.ELECTRIC_FIELD] = field
        node_energy, invariants, layer_features = self.propagate(
            positions, cell, batch[keys.SPECIES], batch[keys.EDGE_INDEX], batch[keys.SHIFTS], graph_of_atom, conditions
        )
        energy = node_energy.new_zeros((*members, num_graphs)).index_add(-1, graph_of_atom, node_energy)
        outputs = Outputs(energy=energy, node_energy=node_energy)
        if self.tensor_readouts is not None:
            outputs.dipole, outputs.polarizability = self.tensor_readouts(layer_features, positions, graph_of_atom, num_graphs,
                                                                          conditions.get(keys.TOTAL_CHARGE))
        if compute_descriptors:
            ones = torch.ones_like(graph_of_atom, dtype=energy.dtype)
            counts = energy.new_zeros(num_graphs).index_add(0, graph_of_atom, ones)  # bincount syncs on a GPU
            summed = invariants.new_zeros((*members, num_graphs, invariants.shape[-1])).index_add(-2, graph_of_atom, invariants)
            outputs.descriptors = summed / counts[:, None]
            outputs.node_features = invariants
        if compute_forces or compute_stress or field is not None:
            wrt = (([leaf_positions] if compute_forces else []) + ([strain] if strain is not None else [])
                   + ([field] if field is not None else []))
            response = compute_field_response and field is not None
            gradients = torch.autograd.grad(outputs.energy.sum(), wrt, create_graph=training or response)
            if field is not None:
                outputs.dipole = -gradients[-1]
                gradients = gradients[:-1]
            if response:
                outputs.polarizability, outputs.born_charges = field_response(
                    outputs.dipole, field, leaf_positions if compute_forces else None, keep_graph=training)
            if compute_forces:
                outputs.forces = -gradients[0]
            if strain is not None:
                volume = torch.linalg.det(batch[keys.CELL]).abs()
                outputs.virial = -gradients[-1]
                outputs.stress = gradients[-1] / volume[:, None, None]
        return outputs
