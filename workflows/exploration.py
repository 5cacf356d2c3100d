"""Planning an iteration's exploration: which MD runs, with which parameters.

Pure functions of the stage settings, so the plan is unit-tested without a database; the loop keeps
the plan in its context as plain lists (a start label, a temperature in K, a run index).
"""

from __future__ import annotations

import numpy as np

from .settings import StageSettings


def evenly_spread(labels: list[str], count: int) -> list[str]:
    """At most ``count`` of the sorted ``labels``, evenly spread over them."""
    labels = sorted(labels)
    picks = np.unique(np.linspace(0, len(labels) - 1, num=min(count, len(labels))).round().astype(int))
    return [labels[i] for i in picks]


def plan_md_runs(start_labels: list[str], stage: StageSettings) -> list[list]:
    """``[start_label, temperature (K), run]`` of every MD run of ``stage``, in launch order.

    Every start (at most ``max_starts``, evenly spread), at every temperature, ``runs`` times each; the
    position in this list is the run's number in its link label ``iteration_XX_md_NNN``.
    """
    starts = sorted(start_labels)
    if stage.max_starts is not None:
        starts = evenly_spread(starts, stage.max_starts)
    return [[label, float(temperature), run]
            for label in starts for temperature in stage.temperatures for run in range(stage.runs)]


def md_parameters(stage: StageSettings, temperature: float, run: int, iteration: int, max_force_std: float,
                  uncertainty: str = "ensemble") -> dict:
    """The ``tace.md`` parameters of one run: NVT, or NPT when the stage sets a pressure (GPa).

    The seed depends on the iteration and the run only, so a run is reproducible; ``max_force_std``
    (eV/Å) stops the run once the force deviation of ``uncertainty`` (``ensemble`` or ``features``) is that
    large. A biased stage adds its bias settings; settings at their defaults are left out, so the
    parameters of earlier runs stay as they were.
    """
    bias = {"bias_strength": stage.bias_strength, "bias_width": stage.bias_width} if stage.bias_strength > 0 else {}
    source = {"uncertainty": uncertainty} if uncertainty != "ensemble" else {}
    driver = {"driven_by": stage.driven_by} if stage.driven_by != "mean" else {}
    driver |= {"compile_driver": True} if stage.compile_driver else {}
    return {**bias, **source, **driver,
        "ensemble": "npt" if stage.pressure is not None else "nvt",
        "thermostat": stage.thermostat, "temperature": float(temperature),
        "pressure": float(stage.pressure or 0.0), "timestep": stage.timestep,
        "steps": stage.steps, "save_interval": stage.save_interval,
        "max_force_std": max_force_std, "seed": 1000 * iteration + run,
    }


def stop_threshold(stage: StageSettings, trust_high: float) -> float:
    """The stage's ``max_force_std`` (eV/Å), by default ``stop_factor`` times the selection's ``trust_high``."""
    return stage.max_force_std or stage.stop_factor * trust_high
