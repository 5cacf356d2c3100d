"""Smoke test of the harness and the mace-torch peer (a few minutes on 2 CPU cores).

Run from the repository root: ``python -m benchmarks.smoke_mace``. Work files go
to a temporary directory outside the repository.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from benchmarks.common import MatchedSettings, benchmark_metrics, format_table, load_3bpa_split, periodic_test_cell
from benchmarks.mace_peer import train_mace


def main() -> None:
    """Train MACE on 20 frames for 2 epochs (8 channels) and print its benchmark row."""
    settings = MatchedSettings(channels=8, epochs=2)
    train, valid, test_by_temperature, _ = load_3bpa_split(seed=settings.seed, valid_fraction=settings.valid_fraction)
    print("test frames per temperature:", {t: len(frames) for t, frames in test_by_temperature.items()})
    small_test = {t: frames[:10] for t, frames in test_by_temperature.items()}
    with tempfile.TemporaryDirectory(prefix="mace_smoke_") as tmp:
        model = train_mace(train[:20], valid[:10], settings, Path(tmp) / "mace")
        row = benchmark_metrics(model, small_test, periodic_test_cell(), repeats=2, md_steps=20)
    print(format_table({model.name: row}))


if __name__ == "__main__":
    main()
