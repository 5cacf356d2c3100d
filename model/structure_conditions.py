"""A structure's conditions (charge, spin, fidelity, electric field) as ``atoms.info`` carries them.

NumPy and ASE only, so that programs that read or write structures without a model (the labeller's
runner, AiiDA's calcfunctions) do not import PyTorch.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
from ase import Atoms

from .keys import ELECTRIC_FIELD, FIDELITY, SPIN_MULTIPLICITY, TOTAL_CHARGE

#: The ``atoms.info`` entries that hold a structure's conditions (see :func:`conditions`).
CONDITION_INFO = ("charge", "spin", "fidelity", "electric_field")


def conditions(atoms: Atoms) -> dict[str, np.ndarray]:
    """The structure's conditions from ``atoms.info``: ``charge`` (e, default 0), ``spin`` (multiplicity
    2S+1 >= 1, default 1), ``fidelity`` (integer >= 0, default 0), ``electric_field`` (3 values, V/Å,
    default 0); an error names the entry that is not valid."""
    return read_conditions(atoms.info)


def read_conditions(info: Mapping) -> dict[str, np.ndarray]:
    """The conditions in ``info`` (a frame's info or a mapping of the same keys), checked as :func:`conditions`."""
    charge = np.asarray(info.get("charge", 0.0), dtype=float)
    spin = np.asarray(info.get("spin", 1.0), dtype=float)
    fidelity = np.asarray(info.get("fidelity", 0), dtype=float)
    field = np.asarray(info.get("electric_field", np.zeros(3)), dtype=float)
    if charge.shape != () or not np.isfinite(charge):
        raise ValueError(f"info['charge'] must be one finite number (e), not {info['charge']!r}")
    if spin.shape != () or not spin >= 1:
        raise ValueError(f"info['spin'] must be a spin multiplicity 2S+1 >= 1, not {info['spin']!r}")
    if fidelity.shape != () or fidelity < 0 or fidelity != np.round(fidelity):
        raise ValueError(f"info['fidelity'] must be an integer >= 0 (a level of theory), not {info['fidelity']!r}")
    if field.shape != (3,) or not np.isfinite(field).all():
        raise ValueError(f"info['electric_field'] must be 3 finite numbers (V/Å), not {info['electric_field']!r}")
    return {TOTAL_CHARGE: charge, SPIN_MULTIPLICITY: spin, FIDELITY: fidelity.astype(np.int64), ELECTRIC_FIELD: field}


def condition_info(values: Mapping) -> dict:
    """``values`` (some of :data:`CONDITION_INFO`) checked and completed as plain JSON values for ``atoms.info``:
    ``{"charge": float, "spin": float, "fidelity": int, "electric_field": [3 floats]}``; an unknown key is named."""
    unknown = sorted(set(values) - set(CONDITION_INFO))
    if unknown:
        raise ValueError(f"unknown conditions {unknown}; the conditions are {list(CONDITION_INFO)}")
    read = read_conditions(values)
    return {"charge": float(read[TOTAL_CHARGE]), "spin": float(read[SPIN_MULTIPLICITY]),
            "fidelity": int(read[FIDELITY]), "electric_field": [float(x) for x in read[ELECTRIC_FIELD]]}


def condition_info_of(atoms: Atoms) -> dict:
    """The conditions of ``atoms`` as :func:`condition_info` gives them (neutral values where ``info`` has none)."""
    return condition_info({name: atoms.info[name] for name in CONDITION_INFO if name in atoms.info})


def conditions_differ(first: Atoms, second: Atoms) -> bool:
    """Whether two structures' conditions differ (ASE's calculators compare positions, cell and numbers, not info)."""
    before, after = conditions(first), conditions(second)
    return any(not np.array_equal(before[key], after[key]) for key in before)
