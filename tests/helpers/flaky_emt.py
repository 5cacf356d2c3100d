"""An EMT calculator that fails on frames selected from MD (they carry ``source_frame``)."""

from ase.calculators.emt import EMT


class EMTFailingOnSelectedFrames(EMT):
    def calculate(self, atoms=None, properties=("energy",), system_changes=None):
        if atoms is not None and "source_frame" in atoms.info:
            raise RuntimeError("SCF did not converge (simulated failure)")
        super().calculate(atoms, properties, system_changes or [])
