"""tace-aiida: active learning of irreducible-Cartesian-tensor potentials with AiiDA."""

__version__ = "0.1.0"
