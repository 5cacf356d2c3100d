"""``tace.label_ase_batches``: a set split into jobs, at most ``max_concurrent`` alive, failures per structure."""

from __future__ import annotations

import numpy as np
import pytest
from aiida import orm
from aiida.engine import run_get_node
from ase.build import bulk
from ase.calculators.emt import EMT
from tace_aiida.workflows.labelling.ase_batches import AseLabelBatchesWorkChain

from tace_aiida.data import TrainingSetData

pytestmark = pytest.mark.slow


def seven_structures() -> list:
    """Six rattled Cu cells and, at index 4, a Si cell that EMT cannot label."""
    frames = []
    for i in range(7):
        atoms = bulk("Si", "diamond", a=5.43) if i == 4 else bulk("Cu", "fcc", a=3.6, cubic=True)
        atoms.rattle(0.05, seed=i)
        frames.append(atoms)
    return frames


def run_batches(installed_code, calculator: str = "ase.calculators.emt.EMT"):
    return run_get_node(AseLabelBatchesWorkChain, code=installed_code("tace-label"), calculator=orm.Str(calculator),
                        structures=TrainingSetData(seven_structures()), structures_per_job=orm.Int(3),
                        max_concurrent=orm.Int(2))


def test_jobs_of_three_two_at_a_time_label_everything_but_the_failure(aiida_profile, installed_code):
    results, node = run_batches(installed_code)
    assert node.is_finished_ok, node.exit_message
    report = results["report"].get_dict()
    assert (report["num_structures"], report["num_labelled"], report["num_failed"]) == (7, 6, 1)
    assert report["failures"][0]["index"] == 4
    frames = results["dataset"].get_atoms()
    assert [atoms.info["input_index"] for atoms in frames] == [0, 1, 2, 3, 5, 6]
    originals = seven_structures()
    for atoms in frames:
        assert np.allclose(atoms.positions, originals[atoms.info["input_index"]].positions, atol=1e-7)
        reference = atoms.copy()
        reference.calc = EMT()
        assert atoms.get_potential_energy() == pytest.approx(reference.get_potential_energy(), abs=1e-10)

    jobs = {link.link_label: link.node for link in node.base.links.get_outgoing(node_class=orm.CalcJobNode).all()}
    assert sorted(jobs) == ["job_0", "job_1", "job_2"]
    assert [jobs[f"job_{k}"].inputs.structures.num_structures for k in range(3)] == [3, 3, 1]
    assert jobs["job_2"].ctime > min(jobs["job_0"].mtime, jobs["job_1"].mtime), "two alive at most: the third waits"
    by_index = {atoms.info["input_index"]: atoms.info["label_uuid"] for atoms in frames}
    assert by_index[0] == jobs["job_0"].uuid and by_index[5] == jobs["job_1"].uuid and by_index[6] == jobs["job_2"].uuid


def test_jobs_failing_as_a_whole_count_every_structure_as_failed(aiida_profile, installed_code):
    results, node = run_batches(installed_code, calculator="ase.calculators.nothing.Nope")
    assert node.exit_status == AseLabelBatchesWorkChain.exit_codes.ERROR_ALL_STRUCTURES_FAILED.status
    report = results["report"].get_dict()
    assert report["num_failed"] == 7 and [f["index"] for f in report["failures"]] == list(range(7))
    assert "ase.calculators.nothing.Nope" in report["failures"][0]["error"]
    assert node.exit_message.startswith("No structure could be labelled: structure 0: AseLabelCalculation<")
    assert node.exit_message.endswith("(and 6 more, in the `report` output)")
