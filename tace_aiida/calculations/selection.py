"""``tace.select_frames``: the selection of frames to label, as a calcfunction (every choice recorded)."""

from __future__ import annotations

import numpy as np
from aiida import orm
from aiida.engine import calcfunction
from ase import Atoms

from tace_aiida.data import TrainingSetData
from tace_aiida.model.structure_conditions import CONDITION_INFO
from tace_aiida.selection import (
    ACCURATE,
    CANDIDATE,
    FAILED,
    SelectionSettings,
    classify,
    frame_deviation,
    lower_bound,
    pick_diverse,
)


def trajectory_frame(trajectory: orm.TrajectoryData, index: int) -> Atoms:
    """Frame ``index`` of a ``tace.md`` trajectory as ASE Atoms, with the ensemble's predictions attached and the
    conditions it ran with (charge, spin, fidelity, electric_field) in its info."""
    _, _, cell, symbols, positions, _ = trajectory.get_step_data(index)
    atoms = Atoms(symbols=symbols, positions=positions, cell=cell, pbc=trajectory.pbc)
    atoms.new_array("predicted_forces", trajectory.get_array("forces")[index])
    atoms.new_array("predicted_forces_std", trajectory.get_array("forces_std")[index])
    atoms.info.update(
        source_uuid=trajectory.uuid,
        source_frame=index,
        md_step=int(trajectory.get_stepids()[index]),
        predicted_energy=float(trajectory.get_array("energies")[index]),
        predicted_max_force_std=float(trajectory.get_array("max_force_std")[index]),
        temperature=float(trajectory.get_array("temperatures")[index]),
    )
    names = trajectory.get_arraynames()
    atoms.info.update({name: trajectory.get_array(name)[index].tolist() for name in CONDITION_INFO if name in names})
    return atoms


@calcfunction
def select_frames(parameters: orm.Dict, families: orm.Dict | None = None, uncertainty_scale: orm.Float | None = None,
                  **trajectories: orm.TrajectoryData):
    """Classify every frame of every trajectory by the trust window and pick diverse candidates.

    ``parameters``: trust_low, trust_high, relative, relative_epsilon, max_selected, diversity (kmeans,
    fps, lcmd, maxdet, none), seed, calibrate, and optionally ``families`` {name: {trust_low, trust_high, ...}};
    ``families`` (the input) maps a trajectory's link label to its structure family; ``uncertainty_scale``
    multiplies every deviation (the calibration's scale; 1 without it). Returns ``selected``
    (unlabelled frames with their provenance and the ensemble's predictions in each frame) and
    ``report`` (counts and fractions of accurate / candidate / failed frames per trajectory and in all,
    and ``lower_bounds``: the window's lower bound used for each family, "" for none; adaptive windows
    set it from all the frames of their family).
    """
    settings = SelectionSettings.from_dict(parameters.get_dict())
    family_of = families.get_dict() if families is not None else {}
    scale = uncertainty_scale.value if uncertainty_scale is not None else 1.0
    deviations = {label: scale * frame_deviation(trajectories[label].get_array("forces"),
                                                 trajectories[label].get_array("forces_std"),
                                                 settings.window_for(family_of.get(label)))
                  for label in sorted(trajectories)}
    lower_bounds = {}
    for family in sorted({family_of.get(label) or "" for label in deviations}):
        members = [deviations[label] for label in deviations if (family_of.get(label) or "") == family]
        lower_bounds[family] = lower_bound(np.concatenate(members), settings.window_for(family or None))
    per_trajectory, candidates = {}, []
    for label, deviation in deviations.items():
        family = family_of.get(label)
        classes = classify(deviation, settings.window_for(family), low=lower_bounds[family or ""])
        counts = {name: int((classes == name).sum()) for name in (ACCURATE, CANDIDATE, FAILED)}
        per_trajectory[label] = {**counts, "frames": len(classes), "family": family,
                                 "max_deviation": float(deviation.max()) if len(deviation) else 0.0}
        descriptors = trajectories[label].get_array("descriptors")
        candidates += [(label, int(i), float(deviation[i]), descriptors[i]) for i in np.flatnonzero(classes == CANDIDATE)]
    descriptors = np.array([c[3] for c in candidates]) if candidates else np.zeros((0, 0))
    chosen = pick_diverse(descriptors, np.array([c[2] for c in candidates]), settings)
    frames = [trajectory_frame(trajectories[candidates[i][0]], candidates[i][1]) for i in chosen]
    totals = {name: sum(t[name] for t in per_trajectory.values()) for name in (ACCURATE, CANDIDATE, FAILED, "frames")}
    fractions = {f"{name}_fraction": totals[name] / totals["frames"] if totals["frames"] else 0.0
                 for name in (ACCURATE, CANDIDATE, FAILED)}
    report = {**totals, **fractions, "selected": len(frames), "trajectories": per_trajectory, "uncertainty_scale": scale,
              "lower_bounds": lower_bounds,
              "selected_deviation": [candidates[i][2] for i in chosen]}
    return {"selected": TrainingSetData(frames), "report": orm.Dict(report)}
