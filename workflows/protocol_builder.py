"""From protocol inputs (plain values, as in ``protocols/active_learning.yaml``) to a loop's builder values.

The protocol lists both labellers' settings; :func:`choose_labeller` keeps the one the given code and
calculator call for, and :func:`to_nodes` turns the plain values into the nodes the ports expect.
"""

from __future__ import annotations

import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from aiida import orm
from ase import Atoms
from plumpy.ports import PortNamespace
from pymatgen.core import Structure

from tace_aiida.labelling.runner import calculator_class

from .labelling.qe import PW_PLUGIN

CODE_ROLES = ("train", "md", "label")


def check_codes(codes: dict[str, orm.AbstractCode]) -> None:
    """Refuse a ``codes`` mapping without exactly the roles ``train``, ``md`` and ``label``."""
    missing, unknown = sorted(set(CODE_ROLES) - set(codes)), sorted(set(codes) - set(CODE_ROLES))
    if missing or unknown:
        raise ValueError(f"codes must have the keys {list(CODE_ROLES)}; missing {missing}, unknown {unknown}")


def structure_nodes(structures: Mapping[str, Any]) -> dict[str, orm.StructureData]:
    """``structures``, a mapping of labels to StructureData, ASE ``Atoms`` or pymatgen ``Structure``, as StructureData
    (a ``TypeError`` names anything else, or a structure that is not in a mapping)."""
    if not isinstance(structures, Mapping):
        raise TypeError(f"structures must map labels to structures, e.g. {{'bulk': atoms}}, not a "
                        f"{type(structures).__name__}")
    nodes = {}
    for label, structure in structures.items():
        if isinstance(structure, orm.StructureData):
            nodes[label] = structure
        elif isinstance(structure, Atoms):
            nodes[label] = orm.StructureData(ase=structure)
        elif isinstance(structure, Structure):
            nodes[label] = orm.StructureData(pymatgen=structure)
        else:
            raise TypeError(f"structures[{label!r}] must be a StructureData, an ase Atoms or a pymatgen Structure, not "
                            f"a {type(structure).__name__}")
    return nodes


def choose_labeller(inputs: dict, code: orm.AbstractCode, calculator: str | None, pseudo_family: str | None) -> dict:
    """``inputs`` with one labeller namespace: ``label_qe`` for a pw.x code, else ``label_ase`` with ``calculator``.

    ``calculator`` is an ASE calculator's import path (``ase.calculators.emt.EMT``); ``pseudo_family``
    the label of an installed aiida-pseudo family (default: the pw protocol's own family).
    """
    inputs = dict(inputs)
    ase, qe = dict(inputs.pop("label_ase", {})), dict(inputs.pop("label_qe", {}))
    if code.default_calc_job_plugin == PW_PLUGIN:
        if calculator is not None:
            raise ValueError(f"code {code.full_label!r} is pw.x (label_qe): it takes no ASE calculator, "
                             f"not {calculator!r}")
        inputs["label_qe"] = {**qe, "code": code, **({"pseudo_family": pseudo_family} if pseudo_family else {})}
        return inputs
    if calculator is None:
        raise ValueError(f"code {code.full_label!r} (plugin {code.default_calc_job_plugin!r}) labels with an ASE "
                         "calculator: give `calculator`, an import path such as 'ase.calculators.emt.EMT', or a pw.x "
                         f"code (plugin {PW_PLUGIN!r}) for label_qe")
    if pseudo_family is not None:
        raise ValueError(f"pseudo_family {pseudo_family!r} is for pw.x codes; code {code.full_label!r} labels with "
                         f"the ASE calculator {calculator!r}")
    if runs_this_environment(code):
        try:
            calculator_class(calculator)
        except ValueError as error:
            raise ValueError(f"{error} (code {code.full_label!r} runs this environment's tace-label)") from error
    inputs["label_ase"] = {**ase, "code": code, "calculator": calculator}
    return inputs


def runs_this_environment(code: orm.AbstractCode) -> bool:
    """Whether ``code`` runs the ``tace-label`` of this Python environment on this machine, so that what imports here
    imports in its jobs (another environment may have calculators this one lacks)."""
    here = shutil.which("tace-label")
    if not isinstance(code, orm.InstalledCode) or here is None or code.computer.transport_type != "core.local":
        return False
    return Path(str(code.filepath_executable)).resolve() == Path(here).resolve()


def to_nodes(namespace: PortNamespace, values: dict[str, Any], path: str = "") -> dict[str, Any]:
    """``values`` with every plain value of a data port as a node (dict -> Dict, list -> List, 3 -> Int, ...).

    Sub-namespaces are followed; ``metadata`` and nodes are kept as they are. A key that is no input of a namespace
    is a ``ValueError`` naming it (``path``: the namespace's, dotted) and the known inputs (a typo in the overrides,
    say), except in a namespace made to hold any key (``structures``). Namespaces exposed from a process count as
    having only their ports: aiida-core marks them dynamic, but the process takes only those.
    """
    converted = {}
    for key, value in values.items():
        port = namespace.get(key)
        if port is None and key != "metadata" and not (namespace.dynamic and not len(namespace)):
            raise ValueError(f"unknown input {path + key!r}; the inputs there are {sorted(namespace)}")
        if key == "metadata" or isinstance(value, orm.Node):
            converted[key] = value
        elif isinstance(port, PortNamespace) and isinstance(value, dict):
            converted[key] = to_nodes(port, value, f"{path}{key}.")
        else:
            converted[key] = orm.to_aiida_type(value)
    return converted
