"""AiiDA data types of tace-aiida: labelled training sets and trained potentials."""

from .dataset import TrainingSetData
from .potential import PotentialData

__all__ = ["TrainingSetData", "PotentialData"]
