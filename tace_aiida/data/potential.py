"""``tace.potential``: one trained potential (its checkpoint file) with searchable attributes."""

from __future__ import annotations

import hashlib
import tempfile
from collections.abc import Sequence
from pathlib import Path

from aiida import orm
from ase.data import chemical_symbols

from tace_aiida.model.checkpoint import read_checkpoint

FILENAME = "model.pt"


class PotentialData(orm.Data):
    """A checkpoint written by ``tace-train``.

    Attributes: ``sha256`` of the file, ``elements``, ``r_max`` (Å), ``dtype``, ``model_config``
    (all hyperparameters and data statistics) and ``metrics`` (validation errors of the saved epoch).
    The file is validated on creation: a damaged or foreign file is refused.
    """

    def __init__(self, checkpoint: str | Path | None = None, **kwargs) -> None:
        super().__init__(**kwargs)
        if checkpoint is not None:
            self.set_checkpoint(checkpoint)

    def set_checkpoint(self, checkpoint: str | Path) -> None:
        payload = read_checkpoint(checkpoint)
        content = Path(checkpoint).read_bytes()
        self.base.repository.put_object_from_bytes(content, FILENAME)
        config = payload["model_config"]
        self.base.attributes.set_many(
            {
                "sha256": hashlib.sha256(content).hexdigest(),
                "elements": [chemical_symbols[z] for z in config["atomic_numbers"]],
                "r_max": config["r_max"],
                "dtype": payload["dtype"],
                "model_config": config,
                "metrics": payload["metadata"].get("best_epoch_metrics", {}),
            }
        )

    @property
    def sha256(self) -> str:
        return self.base.attributes.get("sha256")

    @property
    def elements(self) -> list[str]:
        return self.base.attributes.get("elements")

    @property
    def r_max(self) -> float:
        return self.base.attributes.get("r_max")

    def write_checkpoint(self, path: str | Path) -> Path:
        """Copy the checkpoint to ``path``."""
        Path(path).write_bytes(self.base.repository.get_object_content(FILENAME, mode="rb"))
        return Path(path)

    def get_calculator(self, device: str = "auto", uncertainty: str = "ensemble"):
        """An ASE calculator of this potential alone (see :func:`ensemble_calculator`)."""
        return ensemble_calculator([self], device, uncertainty)


def ensemble_calculator(potentials: Sequence[PotentialData], device: str = "auto", uncertainty: str = "ensemble"):
    """One :class:`~tace_aiida.model.calculator.TACECalculator` over several stored potentials; ``uncertainty``
    ``features`` takes the force deviation from each potential's own features (one potential is enough)."""
    from tace_aiida.model.calculator import TACECalculator

    with tempfile.TemporaryDirectory(prefix="tace-potentials-") as folder:
        paths = [p.write_checkpoint(Path(folder) / f"member{i}.pt") for i, p in enumerate(potentials)]
        return TACECalculator(paths, device=device, uncertainty=uncertainty)
