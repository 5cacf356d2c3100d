"""Names of the entries of a graph dict and of a batch (:mod:`.data`), with their shapes, dtypes and units.

One structure is a graph dict, a batch concatenates graphs (:func:`.data.collate`); the model reads
the structural entries, the trainer and evaluation the labels. Shapes use ``n_atoms``, ``n_edges``
and ``n_graphs`` of the batch (``n_graphs`` is 1 for a single graph).
"""

from __future__ import annotations

#: ``[n_atoms, 3]`` float, Å: Cartesian positions.
POSITIONS = "positions"
#: ``[n_atoms]`` int64: index of each atom's element in ``ModelConfig.atomic_numbers``.
SPECIES = "species"
#: ``[2, n_edges]`` int64: (sender, receiver) atom indices of every pair within ``r_max``.
EDGE_INDEX = "edge_index"
#: ``[n_edges, 3]`` float, integer multiples of the cell vectors: an edge's vector (Å) is
#: ``positions[sender] - positions[receiver] + shifts @ cell``.
SHIFTS = "shifts"
#: ``[n_graphs, 3, 3]`` float, Å: cell vectors as rows (zeros along non-periodic directions).
CELL = "cell"
#: ``[n_atoms]`` int64: index of the graph each atom belongs to.
BATCH = "batch"
#: ``[n_graphs]`` float, e: total charge (``info["charge"]``, 0 when absent); a model input.
TOTAL_CHARGE = "total_charge"
#: ``[n_graphs]`` float: spin multiplicity 2S+1 (``info["spin"]``, 1 when absent); a model input.
SPIN_MULTIPLICITY = "spin_multiplicity"
#: ``[n_graphs]`` int64: level of theory of the labels (``info["fidelity"]``, 0 when absent); a model input.
FIDELITY = "fidelity"
#: ``[n_graphs, 3]`` float, V/Å: uniform external electric field (``info["electric_field"]``, 0 when absent).
ELECTRIC_FIELD = "electric_field"
#: ``[n_graphs]`` int64: atoms per graph (batches only).
NUM_ATOMS = "num_atoms"

#: ``[n_graphs]`` float, eV: total energy label (0 where absent).
ENERGY = "energy"
#: ``[n_atoms, 3]`` float, eV/Å: force labels (0 where absent).
FORCES = "forces"
#: ``[n_graphs, 3, 3]`` float, eV/Å^3: stress label, ASE's sign (0 where absent; periodic cells only).
STRESS = "stress"
#: ``[n_graphs, 3]`` float, e Å: dipole label of a molecule (0 where absent).
DIPOLE = "dipole"
#: ``[n_graphs, 3, 3]`` float, Å^3: polarizability (volume) label of a molecule (0 where absent).
POLARIZABILITY = "polarizability"
#: ``[n_atoms, 3, 3]`` float, e: Born effective charge labels ``Z_A[j, k] = dF_Ak / dE_j``; only graphs that have
#: them carry the entry (a batch has zeros for the others).
BORN_CHARGES = "born_charges"
#: ``[n_graphs]`` float, 1 or 0: whether the graph has an energy label.
HAS_ENERGY = "has_energy"
#: ``[n_graphs]`` float, 1 or 0: whether the graph has force labels.
HAS_FORCES = "has_forces"
#: ``[n_graphs]`` float, 1 or 0: whether the graph has a stress label.
HAS_STRESS = "has_stress"
#: ``[n_graphs]`` float, 1 or 0: whether the graph has a dipole label.
HAS_DIPOLE = "has_dipole"
#: ``[n_graphs]`` float, 1 or 0: whether the graph has a polarizability label.
HAS_POLARIZABILITY = "has_polarizability"
#: ``[n_graphs]`` float, 1 or 0: whether the graph has Born effective charge labels.
HAS_BORN_CHARGES = "has_born_charges"

#: Entries with one row per graph, and with one row per atom: concatenated as they are when batching.
#: The conditions every graph carries, as :mod:`.conditions` reads them.
CONDITIONS = (TOTAL_CHARGE, SPIN_MULTIPLICITY, FIDELITY, ELECTRIC_FIELD)
PER_GRAPH = (CELL, *CONDITIONS, ENERGY, STRESS, HAS_ENERGY, HAS_FORCES, HAS_STRESS, DIPOLE, POLARIZABILITY, HAS_DIPOLE,
             HAS_POLARIZABILITY, HAS_BORN_CHARGES)
PER_ATOM = (POSITIONS, SPECIES, FORCES, BORN_CHARGES)
#: Per-atom labels a graph carries only when it has them (9 floats per atom are too many to store as zeros).
SPARSE_LABELS = (BORN_CHARGES,)
