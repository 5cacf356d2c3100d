"""The index of earlier labels: the same datasets as a scan of every labelling process, found without frame files."""

from __future__ import annotations

import numpy as np
import pytest
from ase.build import bulk
from ase.calculators.singlepoint import SinglePointCalculator

from tace_aiida.generation import content_hash
from tace_aiida.generation.reuse import HASHES_EXTRA, KEY_EXTRA, earlier_labels, labeller_key, node_inputs

EMT = "ase.calculators.emt.EMT"


def frames(first: int, count: int) -> list:
    """``count`` rattled, labelled Cu4 cells numbered from ``first``, each with its ``content_hash``."""
    made = []
    for number in range(first, first + count):
        atoms = bulk("Cu", "fcc", a=3.61, cubic=True)
        atoms.rattle(0.05, seed=number)
        atoms.info["content_hash"] = content_hash(atoms)
        atoms.calc = SinglePointCalculator(atoms, energy=-float(number), forces=np.zeros((len(atoms), 3)))
        made.append(atoms)
    return made


def labelling_job(code, labelled: list, cutoff: bool = True, state: str = "finished"):
    """A terminated ``tace.label_ase`` job of EMT with ``asap_cutoff=cutoff`` whose ``dataset`` holds ``labelled``."""
    from aiida import orm
    from aiida.common.links import LinkType
    from plumpy import ProcessState

    from tace_aiida.data import TrainingSetData

    node = orm.CalcJobNode(computer=code.computer, process_type="aiida.calculations:tace.label_ase")
    node.set_option("resources", {"num_machines": 1})
    inputs = {"code": code, "calculator": orm.Str(EMT), "parameters": orm.Dict({"asap_cutoff": cutoff}),
              "structures": TrainingSetData(labelled)}
    for label, value in inputs.items():
        node.base.links.add_incoming(value.store(), link_type=LinkType.INPUT_CALC, link_label=label)
    node.set_process_state(ProcessState(state))
    node.set_exit_status(0)
    node.store()
    dataset = TrainingSetData(labelled)
    dataset.base.links.add_incoming(node, link_type=LinkType.CREATE, link_label="dataset")
    dataset.store()
    node.seal()
    return node


def key_of(code, cutoff: bool = True) -> str:
    from aiida import orm

    return labeller_key("label_ase", {"code": code, "calculator": orm.Str(EMT),
                                      "parameters": orm.Dict({"asap_cutoff": cutoff})})


def scanned(code, key: str, wanted: set[str]) -> set[str]:
    """The uuids of the processes whose dataset holds a wanted hash, by reading every process and frame."""
    from aiida import orm

    query = orm.QueryBuilder().append(orm.CalcJobNode, filters={"process_type": "aiida.calculations:tace.label_ase"},
                                      project=["*"])
    return {process.uuid for (process,) in query.iterall()
            if code.uuid == process.inputs.code.uuid and process.is_terminated and "dataset" in process.outputs
            and labeller_key("label_ase", node_inputs(process)) == key
            and wanted & {atoms.info["content_hash"] for atoms in process.outputs.dataset.get_atoms()}}


@pytest.fixture
def label_code(aiida_profile_clean, aiida_localhost):
    from aiida import orm

    return orm.InstalledCode(label="label-index", computer=aiida_localhost, filepath_executable="/bin/true").store()


def hashes(labelled: list) -> set[str]:
    return {atoms.info["content_hash"] for atoms in labelled}


def test_the_index_finds_what_a_scan_of_every_frame_finds(label_code):
    groups = [frames(10 * k, 4) for k in range(4)]
    jobs = [labelling_job(label_code, group) for group in groups]
    labelling_job(label_code, groups[0], cutoff=False)
    labelling_job(label_code, groups[1], state="killed")
    labelling_job(label_code, groups[2], state="waiting")
    key = key_of(label_code)
    for wanted in (hashes(groups[0][:1]), hashes(groups[1]) | hashes(groups[3][2:]), hashes(frames(100, 3)), set()):
        found = earlier_labels("label_ase", label_code, key, wanted)
        assert set(found) == scanned(label_code, key, wanted)
        for uuid, dataset in found.items():
            assert dataset.creator.uuid == uuid and wanted & hashes(dataset.get_atoms())
    assert set(earlier_labels("label_ase", label_code, key, hashes(groups[2]))) == {jobs[2].uuid}


def test_processes_and_datasets_made_before_the_index_are_found_then_indexed(label_code):
    labelled = frames(0, 3)
    job = labelling_job(label_code, labelled)
    dataset = job.outputs.dataset
    assert KEY_EXTRA not in job.base.extras.keys() and HASHES_EXTRA not in dataset.base.extras.keys()

    found = earlier_labels("label_ase", label_code, key_of(label_code), hashes(labelled[1:2]))
    assert set(found) == {job.uuid}
    assert job.base.extras.get(KEY_EXTRA) == key_of(label_code)
    assert dataset.base.extras.get(HASHES_EXTRA) == [atoms.info["content_hash"] for atoms in labelled]


def test_another_labeller_key_or_code_is_not_matched(label_code, aiida_localhost):
    from aiida import orm

    labelled = frames(0, 2)
    labelling_job(label_code, labelled, cutoff=False)
    other_code = orm.InstalledCode(label="other", computer=aiida_localhost, filepath_executable="/bin/true").store()
    assert earlier_labels("label_ase", label_code, key_of(label_code, cutoff=True), hashes(labelled)) == {}
    assert earlier_labels("label_ase", other_code, key_of(other_code, cutoff=False), hashes(labelled)) == {}
    assert len(earlier_labels("label_ase", label_code, key_of(label_code, cutoff=False), hashes(labelled))) == 1


def test_a_second_lookup_reads_no_frame_file_and_no_process_inputs(label_code, monkeypatch):
    from tace_aiida.data import TrainingSetData
    from tace_aiida.generation import reuse

    groups = [frames(10 * k, 5) for k in range(3)]
    for group in groups:
        labelling_job(label_code, group)
    wanted = hashes(groups[1][3:])
    first = earlier_labels("label_ase", label_code, key_of(label_code), wanted)

    def refuse(*_):
        raise AssertionError("the indexed lookup read a frame file or the inputs of a process")

    monkeypatch.setattr(TrainingSetData, "get_atoms", refuse)
    monkeypatch.setattr(reuse, "node_inputs", refuse)
    second = earlier_labels("label_ase", label_code, key_of(label_code), wanted)
    assert {uuid: dataset.uuid for uuid, dataset in second.items()} == \
        {uuid: dataset.uuid for uuid, dataset in first.items()}
    assert len(second) == 1
