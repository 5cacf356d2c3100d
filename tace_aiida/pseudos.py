"""Pseudopotential families for Quantum ESPRESSO from local UPF files (no download needed).

Debian's ``quantum-espresso`` package ships UPF files in :data:`QE_PSEUDO_DIR`; for example::

    ensure_pseudo_family("tace/Si-PBE", {"Si": "Si.pbe-rrkj.UPF"}, cutoffs={"Si": (30.0, 120.0)})

installs an aiida-pseudo family once and returns the same family on every later call.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from pathlib import Path

from aiida import orm
from aiida_pseudo.data.pseudo import UpfData
from aiida_pseudo.groups.family import CutoffsPseudoPotentialFamily, PseudoPotentialFamily

QE_PSEUDO_DIR = Path("/usr/share/espresso/pseudo")
STRINGENCY = "normal"


def _resolve(path: str | Path) -> Path:
    """``path`` as given, or a bare file name looked up in :data:`QE_PSEUDO_DIR`."""
    candidate = Path(path)
    if not candidate.is_absolute() and not candidate.exists():
        candidate = QE_PSEUDO_DIR / candidate
    if not candidate.is_file():
        raise FileNotFoundError(f"pseudopotential file {str(path)!r} not found (also looked in {QE_PSEUDO_DIR})")
    return candidate


def _files_in(directory: Path) -> dict[str, Path]:
    """Element -> UPF file for a directory that holds exactly one ``*.upf``/``*.UPF`` file per element."""
    files: dict[str, Path] = {}
    for path in sorted(directory.iterdir()):
        if path.suffix.lower() != ".upf":
            continue
        with path.open("rb") as handle:
            element = UpfData(handle, filename=path.name).element
        if element in files:
            raise ValueError(f"{directory} holds two pseudopotentials for {element}: {files[element].name} and "
                             f"{path.name}; pass an element -> file mapping instead")
        files[element] = path
    if not files:
        raise ValueError(f"no UPF file found in {directory}")
    return files


def _md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def _check_same(family: PseudoPotentialFamily, files: Mapping[str, Path], cutoffs: dict) -> None:
    """Raise unless the installed ``family`` holds exactly ``files`` (by checksum) and ``cutoffs``."""
    installed = {element: pseudo.md5 for element, pseudo in family.pseudos.items()}
    if installed != {element: _md5(path) for element, path in files.items()}:
        raise ValueError(f"pseudo family {family.label!r} exists with other files (elements {sorted(installed)}); "
                         "choose another label")
    if not cutoffs:
        return
    present = {}
    if isinstance(family, CutoffsPseudoPotentialFamily) and STRINGENCY in family.get_cutoff_stringencies():
        present = family.get_cutoffs(STRINGENCY)
    if present != cutoffs or family.get_cutoffs_unit(STRINGENCY) != "Ry":
        raise ValueError(f"pseudo family {family.label!r} exists with other cutoffs {present}; choose another label")


def ensure_pseudo_family(
    label: str,
    source: Mapping[str, str | Path] | str | Path,
    cutoffs: Mapping[str, tuple[float, float]] | None = None,
) -> PseudoPotentialFamily:
    """The pseudopotential family ``label``, installed from ``source`` unless it already exists.

    :param source: element -> UPF file (absolute, relative to the working directory, or a file name in
        :data:`QE_PSEUDO_DIR`), or a directory holding one UPF file per element.
    :param cutoffs: element -> (ecutwfc, ecutrho) in Ry, stored as the family's recommended cutoffs
        (stringency ``normal``) so that aiida-quantumespresso's protocols can use the family without
        cutoff overrides.
    :raises ValueError: if a family ``label`` exists with other files or other cutoffs, or if ``cutoffs``
        does not name exactly the elements of ``source``.
    """
    if isinstance(source, (str, Path)):
        files = _files_in(Path(source))
    else:
        files = {element: _resolve(path) for element, path in source.items()}
    wanted_cutoffs = {
        element: {"cutoff_wfc": float(wfc), "cutoff_rho": float(rho)} for element, (wfc, rho) in (cutoffs or {}).items()
    }
    if wanted_cutoffs and set(wanted_cutoffs) != set(files):
        raise ValueError(f"cutoffs are given for {sorted(wanted_cutoffs)} but the files are for {sorted(files)}")

    existing = orm.QueryBuilder().append(PseudoPotentialFamily, filters={"label": label}).first(flat=True)
    if existing is not None:
        _check_same(existing, files, wanted_cutoffs)
        return existing

    pseudos = []
    for element, path in sorted(files.items()):
        with path.open("rb") as handle:
            pseudo = UpfData.get_or_create(handle, filename=path.name)
        if pseudo.element != element:
            raise ValueError(f"{path} is a pseudopotential for {pseudo.element}, not {element}")
        pseudos.append(pseudo.store() if not pseudo.is_stored else pseudo)
    family = CutoffsPseudoPotentialFamily(
        label=label, description=f"UPF files: {', '.join(str(files[e]) for e in sorted(files))}"
    ).store()
    family.add_nodes(pseudos)
    if wanted_cutoffs:
        family.set_cutoffs(wanted_cutoffs, STRINGENCY, unit="Ry")
    return family
