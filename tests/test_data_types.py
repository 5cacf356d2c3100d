"""``tace.dataset`` and ``tace.potential``: storage, conversions, validation, merge provenance."""

from __future__ import annotations

import numpy as np
import pytest
from aiida import orm
from ase.build import bulk
from tace_aiida.model.checkpoint import CheckpointError

from tace_aiida.calculations.functions import merge_datasets, structures_to_dataset
from tace_aiida.data import PotentialData, TrainingSetData

from .helpers.legacy_dataset import labelled_copper, legacy_dataset


def test_dataset_round_trip_keeps_labels_and_metadata(aiida_profile, frames_300K):
    frames = [a.copy() for a in frames_300K[:5]]
    for atoms, source in zip(frames, frames_300K[:5], strict=True):
        atoms.calc = source.calc
        atoms.info["temperature"] = 300.0
    stored = TrainingSetData(frames).store()
    loaded = orm.load_node(stored.pk)
    assert loaded.num_structures == 5 and len(loaded) == 5
    assert loaded.elements == ["C", "H", "N", "O"]
    assert loaded.label_counts == {"energy": 5, "forces": 5, "stress": 0}
    assert loaded.base.attributes.get("num_atoms") == 135
    for original, atoms in zip(frames_300K[:5], loaded.get_atoms(), strict=True):
        assert atoms.get_potential_energy() == pytest.approx(original.get_potential_energy(), abs=1e-10)
        assert np.allclose(atoms.get_forces(), original.get_forces(), atol=1e-10)
        assert np.allclose(atoms.positions, original.positions, atol=1e-10)
        assert atoms.info["temperature"] == 300.0


def test_dataset_converts_to_structure_data_and_pymatgen(aiida_profile):
    cells = [bulk("Cu", "fcc", a=3.6, cubic=True), bulk("Cu", "fcc", a=3.7) * (2, 1, 1)]
    dataset = TrainingSetData(cells)
    assert dataset.label_counts == {"energy": 0, "forces": 0, "stress": 0}
    structures = dataset.get_structures()
    assert [len(s.sites) for s in structures] == [4, 2]
    assert np.allclose(structures[0].cell, cells[0].cell[:])
    from_pymatgen = TrainingSetData.from_pymatgen(dataset.get_pymatgen(), origin="pymatgen")
    assert [a.get_chemical_formula() for a in from_pymatgen.get_atoms()] == ["Cu4", "Cu2"]
    assert from_pymatgen.get_atoms()[1].info["origin"] == "pymatgen"


def test_stress_is_stored_as_full_tensor(aiida_profile):
    from ase.calculators.emt import EMT

    atoms = bulk("Cu", "fcc", a=3.5)
    atoms.calc = EMT()
    atoms.get_stress()
    stored = TrainingSetData([atoms]).store()
    reloaded = orm.load_node(stored.pk).get_atoms()[0]
    assert np.allclose(reloaded.get_stress(), atoms.get_stress(), atol=1e-12)
    assert stored.label_counts["stress"] == 1


def test_non_finite_label_is_refused(aiida_profile):
    from ase.calculators.singlepoint import SinglePointCalculator

    atoms = bulk("Cu")
    atoms.calc = SinglePointCalculator(atoms, energy=float("nan"))
    with pytest.raises(ValueError, match="energy label is not finite"):
        TrainingSetData([atoms])


def test_merge_and_conversion_are_recorded(aiida_profile):
    structures = {f"s{i}": orm.StructureData(ase=bulk("Cu", "fcc", a=3.5 + 0.05 * i)) for i in range(3)}
    unlabelled = structures_to_dataset(**structures)
    assert unlabelled.creator.process_type.endswith("structures_to_dataset")
    sources = {a.info["source_uuid"] for a in unlabelled.get_atoms()}
    assert sources == {s.uuid for s in structures.values()}
    second = TrainingSetData([bulk("Cu", "fcc", a=3.9)]).store()
    merged = merge_datasets(first=unlabelled, second=second)
    assert merged.num_structures == 4
    incoming = {link.link_label for link in merged.creator.base.links.get_incoming().all()}
    assert incoming == {"first", "second"}


@pytest.mark.slow
def test_potential_round_trip_and_calculator(aiida_profile, trained, frames_300K):
    from tace_aiida.model.calculator import TACECalculator

    potential = PotentialData(trained["checkpoint"]).store()
    loaded = orm.load_node(potential.pk)
    assert loaded.elements == ["H", "C", "N", "O"] and loaded.r_max == 5.0
    assert len(loaded.sha256) == 64
    assert loaded.base.attributes.get("metrics")["valid_forces_rmse"] > 0
    atoms = frames_300K[3].copy()
    atoms.calc = loaded.get_calculator(device="cpu")
    reference = frames_300K[3].copy()
    reference.calc = TACECalculator(trained["checkpoint"], device="cpu")
    assert atoms.get_potential_energy() == reference.get_potential_energy()


def test_potential_refuses_a_foreign_file(aiida_profile, tmp_path):
    path = tmp_path / "weights.pt"
    path.write_text("not a checkpoint")
    with pytest.raises(CheckpointError, match="weights.pt"):
        PotentialData(path)


def same_frames(first, second) -> bool:
    return len(first) == len(second) and all(
        np.allclose(a.positions, b.positions, atol=1e-12) and a.info == b.info
        and np.allclose(a.get_forces(), b.get_forces(), atol=1e-12) and a.get_potential_energy() == pytest.approx(b.get_potential_energy())
        for a, b in zip(first, second, strict=True)
    )


def test_new_datasets_hold_one_frame_store(aiida_profile):
    stored = TrainingSetData(labelled_copper(3)).store()
    assert stored.format == "tace-frames" and stored.base.repository.list_object_names() == ["frames.h5"]
    assert stored.shard_uuids == [stored.uuid]


def test_a_chain_of_merges_refers_to_its_shards_without_copying(aiida_profile):
    batches = [TrainingSetData(labelled_copper(2, start=2 * i)).store() for i in range(4)]
    merged = batches[0]
    for batch in batches[1:]:
        merged = merge_datasets(previous=merged, new=batch)
    # sorted link labels put ``new`` before ``previous``, as the merge always has
    order = [batches[3], batches[2], batches[1], batches[0]]
    assert merged.shard_uuids == [b.uuid for b in order]
    assert merged.base.repository.list_object_names() == []
    assert merged.num_structures == 8 and merged.base.attributes.get("num_atoms") == 16 and merged.elements == ["Cu"]
    assert merged.label_counts == {"energy": 8, "forces": 8, "stress": 8}
    assert same_frames(merged.get_atoms(), [a for b in order for a in b.get_atoms()])
    ancestors = orm.QueryBuilder().append(orm.Node, filters={"id": merged.pk}, tag="merged").append(
        TrainingSetData, with_descendants="merged", project="uuid").all(flat=True)
    assert set(merged.shard_uuids) <= set(ancestors)


@pytest.mark.slow
def test_fifty_merges_refer_to_fifty_one_shards(aiida_profile):
    batches = [TrainingSetData(labelled_copper(1, start=i)).store() for i in range(51)]
    merged = batches[0]
    for batch in batches[1:]:
        merged = merge_datasets(previous=merged, new=batch)
    assert len(merged.shard_uuids) == 51 and set(merged.shard_uuids) == {b.uuid for b in batches}
    assert sorted(a.info["source_frame"] for a in merged.get_atoms()) == list(range(51))


def test_old_extxyz_datasets_load_and_merge(aiida_profile, tmp_path):
    frames = labelled_copper(3)
    old = legacy_dataset(frames)
    loaded = orm.load_node(old.pk)
    assert loaded.format == "extxyz" and len(loaded) == 3 and loaded.label_counts["stress"] == 3
    assert same_frames(loaded.get_atoms(), frames)
    new = TrainingSetData(labelled_copper(2, start=3)).store()
    merged = merge_datasets(initial=old, labelled=new)
    assert merged.shard_uuids == [old.uuid, new.uuid]
    assert old.num_force_free is None and new.num_force_free == 0 and merged.num_force_free is None, "not counted"
    assert same_frames(merged.get_atoms(), labelled_copper(5))
    merged.write_extxyz(tmp_path / "merged.extxyz")
    from ase.io import read

    assert same_frames(read(tmp_path / "merged.extxyz", ":"), labelled_copper(5))
    old.write_extxyz(tmp_path / "old.extxyz")
    assert (tmp_path / "old.extxyz").read_bytes() == old.base.repository.get_object_content("dataset.extxyz", mode="rb")


def test_a_dataset_with_a_missing_shard_names_it(aiida_profile):
    merged = TrainingSetData(shards=[TrainingSetData(labelled_copper(1)).store()])
    merged.base.attributes.set("shards", ["00000000-0000-4000-8000-000000000000"])
    with pytest.raises(ValueError, match="00000000-0000-4000-8000-000000000000.* not in this profile"):
        merged.get_atoms()
    with pytest.raises(ValueError, match="only stored datasets"):
        TrainingSetData(shards=[TrainingSetData()])


def test_train_calcjob_puts_the_shard_files_in_the_job_folder(aiida_profile, installed_code, tmp_path):
    import yaml
    from aiida.common.folders import Folder

    from tace_aiida.calculations.train import TrainCalculation

    old, new = legacy_dataset(labelled_copper(2)), TrainingSetData(labelled_copper(3, start=2)).store()
    empty = TrainingSetData().store()
    merged = merge_datasets(a=old, b=empty, c=new)
    inputs = {"code": installed_code("tace-train"), "dataset": merged, "validation_dataset": new,
              "parameters": orm.Dict({"max_epochs": 1})}
    calcinfo = TrainCalculation(inputs=inputs).prepare_for_submission(Folder(str(tmp_path)))
    assert calcinfo.local_copy_list == [(old.uuid, "dataset.extxyz", "train_0000.extxyz"),
                                        (new.uuid, "frames.h5", "train_0002.h5"), (new.uuid, "frames.h5", "valid_0000.h5")]
    settings = yaml.safe_load((tmp_path / "config.yaml").read_text())
    assert settings["train_file"] == ["train_0000.extxyz", "train_0002.h5"] and settings["valid_file"] == ["valid_0000.h5"]
