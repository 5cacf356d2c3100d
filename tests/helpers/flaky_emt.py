"""An EMT calculator that fails on frames selected from MD (they carry ``source_frame``)."""

from ase.calculators.emt import EMT


class EMTFailingOnSelectedFrames(EMT):
    def calculate(self, atoms=None, properties=("energy",), system_changes=None):
        if atoms is not None and "source_frame" in atoms.info:
            raise RuntimeError("SCF did not converge (simulated failure)")
        super().calculate(atoms, properties, system_changes or [])


class EMTFailingOnEveryTenthSelectedFrame(EMT):
    """Fails on the 1st, 11th, 21st ... frame selected from MD that one ``tace-label`` process labels (10 %)."""

    selected_frames_seen = 0

    def calculate(self, atoms=None, properties=("energy",), system_changes=None):
        if atoms is not None and "source_frame" in atoms.info:
            seen = EMTFailingOnEveryTenthSelectedFrame.selected_frames_seen
            EMTFailingOnEveryTenthSelectedFrame.selected_frames_seen += 1
            if seen % 10 == 0:
                raise RuntimeError("SCF did not converge (simulated failure of one frame in ten)")
        super().calculate(atoms, properties, system_changes or [])
