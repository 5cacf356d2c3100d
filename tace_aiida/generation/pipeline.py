"""A chain of transformations applied to parent structures, then deduplicated: the variants to label.

Chaining: the transformations apply in order, each to every variant the previous step made (the parents
for the first step), so ``[supercell, strain (5 values), rattle (2 amplitudes × 3 copies)]`` makes 1 × 5 × 6 = 30
variants per parent; a step with ``keep_parents: true`` also passes its inputs on unchanged. A step that does
not apply to a structure (a substitution of an element it lacks, too few sites for a vacancy) makes no variant
of it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from ase import Atoms

from ..site_symmetry import forces_vanish_by_symmetry
from .dedup import HASH_PREFIX, content_hash, deduplicate
from .settings import read_transformations
from .transformations import apply, plain


@dataclass
class Generated:
    """The kept variants (``info``: ``parent``, ``content_hash``) and the report (counts per step, dropped by reason,
    and ``force_free``: how many kept variants have every atom where symmetry forbids a force, so that their labels
    hold energies and stresses but no forces)."""

    frames: list[Atoms]
    report: dict


def generate(parents: dict[str, Atoms], transformations: list[dict], seed: int, symmetry: bool = True) -> Generated:
    """The variants of ``parents`` (label -> Atoms, taken in sorted order) made by the chain ``transformations``.

    The random choices of a step draw from a numpy Generator seeded by ``seed``, the step's position and the
    content hash of its input, so a variant depends on nothing else: adding a copy, an amplitude or a parent
    leaves the other variants as they were (and their labels reusable). Exact repeats are always dropped,
    symmetry-equivalent variants with ``symmetry``.
    """
    chain = read_transformations(transformations)
    variants = []
    for label in sorted(parents):
        atoms = plain(parents[label])
        atoms.info = {"parent": label}
        variants.append(atoms)
    steps = []
    for step, transformation in enumerate(chain):
        made = []
        for atoms in variants:
            rng = np.random.default_rng([seed, step, int(content_hash(atoms).removeprefix(HASH_PREFIX)[:16], 16)])
            for variant in apply(atoms, transformation, rng):
                variant.info = {"parent": atoms.info["parent"]}
                made.append(variant)
        steps.append({"type": transformation.type, "in": len(variants), "out": len(made)})
        variants = made
    hashes = [content_hash(atoms) for atoms in variants]
    result = deduplicate(variants, hashes, symmetry)
    frames = []
    for index in result.kept:
        frame = variants[index]
        frame.info["content_hash"] = hashes[index]
        frames.append(frame)
    report = {"made": len(variants), "kept": len(frames), "dropped": result.counts(), "steps": steps,
              "force_free": sum(forces_vanish_by_symmetry(frame) for frame in frames)}
    return Generated(frames, report)
