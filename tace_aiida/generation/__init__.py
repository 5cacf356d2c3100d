"""Generating training sets: transformations of parent structures, deduplicated (no AiiDA workflow here)."""

from .dedup import content_hash, deduplicate
from .pipeline import Generated, generate
from .settings import TRANSFORMATIONS, read_transformations

__all__ = ["TRANSFORMATIONS", "Generated", "content_hash", "deduplicate", "generate", "read_transformations"]
