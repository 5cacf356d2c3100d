"""The loop's settings as validated objects: each key's type and range checked when a run is submitted.

The inputs stay plain ``orm.Dict`` / ``orm.List`` nodes (so they show in the provenance graph as
they were given); these classes read them, fill defaults and name the offending key and value.
Nothing here is kept in a workchain's context: a context holds plain values and nodes only.
"""

from __future__ import annotations

import typing as t
from dataclasses import asdict, dataclass, field, fields

from tace_aiida.model.md import DRIVERS

T = t.TypeVar("T", bound="Settings")

_NUMBER = (int, float)


def _check_type(owner: str, key: str, value: t.Any, annotation: str) -> None:
    """Raise TypeError unless ``value`` fits the field annotation (as written in the class, a string)."""
    optional = annotation.endswith("| None")
    base = annotation.removesuffix("| None").strip()
    if value is None:
        if optional:
            return
        raise TypeError(f"{owner}: {key} must not be null")
    if isinstance(value, bool) and base != "bool":
        raise TypeError(f"{owner}: {key} must be {base}, not the boolean {value!r}")
    expected = {"int": int, "float": _NUMBER, "str": str, "bool": bool, "list[float]": list}[base]
    if not isinstance(value, expected):
        raise TypeError(f"{owner}: {key} must be {base}, not {type(value).__name__} {value!r}")
    if base == "list[float]" and not all(isinstance(v, _NUMBER) and not isinstance(v, bool) for v in value):
        raise TypeError(f"{owner}: {key} must be a list of numbers, not {value!r}")


def _require(condition: bool, owner: str, key: str, value: t.Any, rule: str) -> None:
    if not condition:
        raise ValueError(f"{owner}: {key} must be {rule}, not {value!r}")


@dataclass(frozen=True)
class Settings:
    """Common reading of a dict: unknown keys and wrong types are refused with the key named."""

    @classmethod
    def from_dict(cls: type[T], data: dict, owner: str | None = None) -> T:
        owner = owner or cls.__name__
        known = {f.name: f for f in fields(cls)}
        unknown = sorted(set(data) - set(known))
        if unknown:
            raise ValueError(f"{owner}: unknown settings {unknown}; known are {sorted(known)}")
        for key, value in data.items():
            _check_type(owner, key, value, str(known[key].type))
        values = {key: (float(value) if str(known[key].type).startswith("float") and value is not None else value)
                  for key, value in data.items()}
        settings = cls(**values)
        settings.check(owner)
        return settings

    def check(self, owner: str) -> None:
        """Range checks; raise ValueError naming the key and value."""

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class StoppingSettings(Settings):
    """When a stage has converged, when the run stops, and how many failures it takes.

    A stage converges when its accurate fraction reaches ``accurate_fraction`` for
    ``converged_iterations`` iterations in a row; with ``lower_bound_tolerance`` (eV/Å, for an adaptive
    trust window) an iteration also counts as converged when the window's lower bound moved by at most
    that much since the previous iteration of the stage. The run stops after ``max_iterations`` (exit 401),
    when more than ``max_label_failure_fraction`` of a selection fails to label (exit 402), or when
    fewer than ``min_members`` ensemble members trained (exit 403).
    """

    accurate_fraction: float = 0.9
    converged_iterations: int = 1
    max_iterations: int = 10
    max_label_failure_fraction: float = 0.2
    min_members: int = 2
    lower_bound_tolerance: float | None = None

    def check(self, owner: str) -> None:
        _require(0.0 <= self.accurate_fraction <= 1.0, owner, "accurate_fraction", self.accurate_fraction, "in [0, 1]")
        _require(self.converged_iterations >= 1, owner, "converged_iterations", self.converged_iterations, ">= 1")
        _require(self.max_iterations >= 1, owner, "max_iterations", self.max_iterations, ">= 1")
        _require(0.0 <= self.max_label_failure_fraction < 1.0, owner, "max_label_failure_fraction",
                 self.max_label_failure_fraction, "in [0, 1): at 1 a selection that failed entirely would go on")
        _require(self.min_members >= 1, owner, "min_members", self.min_members, ">= 1")
        _require(self.lower_bound_tolerance is None or self.lower_bound_tolerance >= 0.0, owner,
                 "lower_bound_tolerance", self.lower_bound_tolerance, ">= 0")


@dataclass(frozen=True)
class StageSettings(Settings):
    """One exploration stage: MD from the starting structures at each temperature (K), ``runs`` times.

    ``pressure`` (GPa) switches to NPT; ``timestep`` in fs; a frame is saved every ``save_interval``
    steps. Starts are the initial structures or, with ``start_from: dataset``, ``dataset_starts``
    frames spread over the current dataset; ``max_starts`` caps them. An MD run stops once the
    ensemble's max force deviation exceeds ``max_force_std`` (eV/Å), by default
    ``stop_factor`` times the selection's ``trust_high``. ``bias_strength`` (eV) above 0 explores with
    uncertainty-driven dynamics (``bias_width`` in eV per sqrt(atom); :mod:`tace_aiida.model.bias`).
    ``driven_by``: ``mean`` integrates the members' mean forces; ``first_member`` integrates the first
    member's and evaluates the ensemble only at the saved frames (DP-GEN's convention), so M members cost
    ``1 + M / save_interval`` times one member per step instead of M times (:mod:`tace_aiida.model.md`).
    ``compile_driver`` (with ``first_member``) compiles that member by AOTInductor at the start of each MD run
    (about a minute, a C++ compiler on the worker) and integrates with the compiled program, 0.4-0.8x the
    checkpoint's cost per energy-and-forces call: for long runs.
    """

    name: str | None = None
    temperatures: list[float] = field(default_factory=lambda: [300.0])
    pressure: float | None = None
    steps: int = 1000
    timestep: float = 1.0
    save_interval: int = 10
    runs: int = 1
    start_from: str = "initial"
    dataset_starts: int = 4
    max_starts: int | None = None
    max_force_std: float | None = None
    stop_factor: float = 2.0
    thermostat: str = "langevin"
    bias_strength: float = 0.0
    bias_width: float = 0.05
    driven_by: str = "mean"
    compile_driver: bool = False

    def check(self, owner: str) -> None:
        _require(len(self.temperatures) > 0 and all(t > 0 for t in self.temperatures), owner, "temperatures",
                 self.temperatures, "a non-empty list of positive temperatures (K)")
        _require(self.pressure is None or self.pressure > -100, owner, "pressure", self.pressure, "in GPa, > -100")
        _require(self.steps >= 1, owner, "steps", self.steps, ">= 1")
        _require(self.timestep > 0, owner, "timestep", self.timestep, "> 0 fs")
        _require(1 <= self.save_interval <= self.steps, owner, "save_interval", self.save_interval,
                 f"between 1 and steps ({self.steps})")
        _require(self.runs >= 1, owner, "runs", self.runs, ">= 1")
        _require(self.start_from in ("initial", "dataset"), owner, "start_from", self.start_from, "'initial' or 'dataset'")
        _require(self.dataset_starts >= 1, owner, "dataset_starts", self.dataset_starts, ">= 1")
        _require(self.max_starts is None or self.max_starts >= 1, owner, "max_starts", self.max_starts, ">= 1")
        _require(self.max_force_std is None or self.max_force_std > 0, owner, "max_force_std", self.max_force_std,
                 "> 0 eV/Å")
        _require(self.stop_factor > 0, owner, "stop_factor", self.stop_factor, "> 0")
        _require(self.thermostat in ("langevin", "bussi"), owner, "thermostat", self.thermostat, "langevin or bussi")
        _require(self.bias_strength >= 0, owner, "bias_strength", self.bias_strength, ">= 0 eV")
        _require(self.bias_width > 0, owner, "bias_width", self.bias_width, "> 0 eV per sqrt(atom)")
        _require(self.driven_by in DRIVERS, owner, "driven_by", self.driven_by, " or ".join(DRIVERS))
        _require(self.driven_by == "mean" or self.bias_strength == 0, owner, "driven_by", self.driven_by,
                 f"'mean' when bias_strength is set ({self.bias_strength} eV): the bias needs every member at every step")
        _require(not self.compile_driver or self.driven_by == "first_member", owner, "compile_driver",
                 self.compile_driver, f"false unless driven_by is 'first_member' (not {self.driven_by!r})")


def read_stages(stages: list[dict]) -> list[StageSettings]:
    """Every stage of an ``exploration`` list, validated; the message names the stage by its index."""
    if not stages:
        raise ValueError("exploration needs at least one stage")
    return [StageSettings.from_dict(stage, owner=f"exploration stage {index}") for index, stage in enumerate(stages)]
