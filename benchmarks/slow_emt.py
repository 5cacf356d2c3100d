"""An EMT calculator that takes a fixed wall time per call: a stand-in for an expensive labeller."""

from __future__ import annotations

import time

from ase.calculators.emt import EMT


class SlowEMT(EMT):
    """ASE's EMT after sleeping ``delay`` seconds (default 1.0) in every ``calculate`` call.

    It stands in for the wall time a DFT code spends on one structure on a node: the labelling jobs of the
    generation benchmark then cost about ``delay`` s per structure (EMT itself takes milliseconds), so the
    throughput measured is that of AiiDA's and dask's orchestration around a labeller of that cost.
    The sleep does not use the CPU, so two dask workers on a busy 2-core machine still label in parallel.
    """

    def __init__(self, delay: float = 1.0, **kwargs) -> None:
        super().__init__(**kwargs)
        self.delay = float(delay)

    def calculate(self, atoms=None, properties=("energy",), system_changes=None):
        time.sleep(self.delay)
        if system_changes is None:
            super().calculate(atoms, properties)
        else:
            super().calculate(atoms, properties, system_changes)
