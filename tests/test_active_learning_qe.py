"""Active learning labelled by Quantum ESPRESSO (``label_qe``): a real run with pw.x, and the choice of labeller."""

from __future__ import annotations

import numpy as np
import pytest
from aiida import orm
from aiida.common.links import LinkType
from aiida.engine import run_get_node
from ase import build
from tace_aiida.workflows.active_learning import ActiveLearningWorkChain

from .conftest import FAMILY, PW_OPTIONS
from .helpers.loop import builder_for, called

SELECTED = 3


def silicon(strain: float, seed: int) -> orm.StructureData:
    """Diamond Si2, strained by ``strain`` and rattled by 0.05 Å."""
    atoms = build.bulk("Si", "diamond", a=5.43 * (1 + strain))
    atoms.rattle(0.05, seed=seed)
    return orm.StructureData(ase=atoms)


def qe_builder(installed_code, pw_code, **settings):
    """``builder_for`` with two Si2 cells labelled by pw.x (fast protocol, the family's 20 Ry, k-points 0.8/Å apart)."""
    builder = builder_for(installed_code, **settings)
    builder.structures = {"si0": silicon(0.0, seed=1), "si1": silicon(0.02, seed=2)}
    del builder.label_ase
    builder.label_qe.code = pw_code
    builder.label_qe.pseudo_family = orm.Str(FAMILY)
    builder.label_qe.protocol = orm.Str("fast")
    builder.label_qe.kpoints_distance = orm.Float(0.8)
    builder.label_qe.options = orm.Dict(PW_OPTIONS)
    return builder


@pytest.mark.slow
def test_qe_labels_grow_the_dataset_with_pw_provenance(fast_polling, installed_code, qe):
    _, pw_code = qe
    results, node = run_get_node(qe_builder(installed_code, pw_code, stopping={"max_iterations": 1}, selection={
        "trust_low": 0.0, "trust_high": 100.0, "max_selected": SELECTED,
    }))
    assert node.exit_status == ActiveLearningWorkChain.exit_codes.ERROR_MAX_ITERATIONS.status, node.exit_message
    assert not called(node, "tace.label_ase")
    labellers = [link.link_label for link in node.base.links.get_outgoing(link_type=LinkType.CALL_WORK).all()
                 if link.node.process_type.endswith("tace.label_qe")]
    assert sorted(labellers) == ["iteration_01_label", "label_initial"]

    [entry] = results["report"]["iterations"]
    assert (entry["dataset_size"], entry["selected"], entry["label_failures"]) == (2, SELECTED, 0)
    assert len(entry["calibration"]["predicted_max_force_std"]) == SELECTED, "predictions survive labelling"
    final = results["dataset"]
    assert final.num_structures == entry["dataset_size_after"] == 2 + SELECTED, "grows by exactly the selection"

    pw_runs = {n.uuid: n for n in called(node, "tace.pw_base")}
    assert len(pw_runs) == final.num_structures
    trajectories = {n.outputs.trajectory.uuid: n.outputs.trajectory for n in called(node, "tace.md")}
    for atoms in final.get_atoms():
        assert atoms.info["label_uuid"] in pw_runs, "labelled by a PwBaseWorkChain of this run"
        pw_base = pw_runs[atoms.info["label_uuid"]]
        parameters = pw_base.outputs.output_parameters
        assert (parameters["energy_units"], parameters["forces_units"]) == ("eV", "ev / angstrom")
        assert atoms.get_potential_energy() == pytest.approx(parameters["energy"], abs=1e-6)
        pw_forces = pw_base.outputs.output_trajectory.get_array("forces")[-1]
        assert np.allclose(atoms.get_forces(), pw_forces, atol=1e-6)
        assert np.allclose(atoms.positions, pw_base.inputs.pw.structure.get_ase().positions, atol=1e-6)
        if "source_frame" in atoms.info:
            predicted = trajectories[atoms.info["source_uuid"]].get_array("forces")[atoms.info["source_frame"]]
            assert np.allclose(atoms.arrays["predicted_forces"], predicted, atol=1e-6)
    assert sum("source_frame" in atoms.info for atoms in final.get_atoms()) == SELECTED


def test_exactly_one_labeller_is_required(fast_polling, installed_code, aiida_code_installed):
    pw_code = aiida_code_installed(label="pw-any", default_calc_job_plugin="quantumespresso.pw")
    both = builder_for(installed_code)
    both.label_qe.code = pw_code
    with pytest.raises(ValueError, match="both `label_ase` and `label_qe` were given"):
        run_get_node(both)
    neither = builder_for(installed_code)
    del neither.label_ase
    with pytest.raises(ValueError, match="no labeller given: fill exactly one of `label_ase`.* or `label_qe`"):
        run_get_node(neither)
    molecule = builder_for(installed_code)
    del molecule.label_ase
    molecule.label_qe.code = pw_code
    molecule.structures["water"] = orm.StructureData(ase=build.molecule("H2O"))
    with pytest.raises(ValueError, match=r"`label_qe` labels periodic cells only: structures \['water'\]"):
        run_get_node(molecule)
