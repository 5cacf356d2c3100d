"""Builders of small active-learning runs with EMT, shared by the loop's tests."""

from __future__ import annotations

from aiida import orm
from ase.build import bulk
from tace_aiida.workflows.active_learning import ActiveLearningWorkChain

TRAINING = {"model": {"channels": 4, "max_edge_rank": 1, "max_hidden_rank": 0, "correlation": 2, "r_max": 4.0,
                      "radial_mlp": [8]},
            "max_epochs": 2, "batch_size": 2, "valid_fraction": 0.0, "dtype": "float32", "device": "cpu"}
STAGE = {"temperatures": [500], "steps": 20, "timestep": 2.0, "save_interval": 4}


def copper(strain: float = 0.0) -> orm.StructureData:
    """A cubic 4-atom fcc Cu cell, strained by ``strain`` and rattled by 0.02 Å."""
    atoms = bulk("Cu", "fcc", a=3.61 * (1 + strain), cubic=True)
    atoms.rattle(0.02, seed=int(strain * 100))
    return orm.StructureData(ase=atoms)


def builder_for(installed_code, *, selection=None, stopping=None, stages=None, ensemble_size=2, calculator=None,
                model=None):
    """A loop of two Cu cells labelled by EMT (or ``calculator``), tiny members, short MD; settings overridable
    (``model`` updates the members' model settings)."""
    builder = ActiveLearningWorkChain.get_builder()
    builder.structures = {"cu0": copper(0.0), "cu1": copper(0.02)}
    builder.label_ase.code = installed_code("tace-label")
    builder.label_ase.calculator = orm.Str(calculator or "ase.calculators.emt.EMT")
    builder.train.code = installed_code("tace-train")
    builder.train.parameters = orm.Dict({**TRAINING, "model": {**TRAINING["model"], **(model or {})}})
    builder.ensemble_size = orm.Int(ensemble_size)
    builder.md.code = installed_code("tace-md")
    builder.exploration = orm.List(stages or [STAGE])
    builder.selection = orm.Dict(selection or {"trust_low": 0.0, "trust_high": 100.0, "max_selected": 3})
    builder.stopping = orm.Dict(stopping or {"max_iterations": 2})
    return builder


def called(node, process_type_suffix: str) -> list:
    """The descendants of ``node`` whose process type ends with ``process_type_suffix``."""
    return [n for n in node.called_descendants if (n.process_type or "").endswith(process_type_suffix)]
