"""``tace.dataset`` and ``tace.potential``: storage, conversions, validation, merge provenance."""

from __future__ import annotations

import numpy as np
import pytest
from aiida import orm
from ase.build import bulk

from tace_aiida.calculations.functions import merge_datasets, structures_to_dataset
from tace_aiida.data import PotentialData, TrainingSetData
from tace_aiida.model.checkpoint import CheckpointError


def test_dataset_round_trip_keeps_labels_and_metadata(aiida_profile, frames_300K):
    frames = [a.copy() for a in frames_300K[:5]]
    for atoms, source in zip(frames, frames_300K[:5]):
        atoms.calc = source.calc
        atoms.info["temperature"] = 300.0
    stored = TrainingSetData(frames).store()
    loaded = orm.load_node(stored.pk)
    assert loaded.num_structures == 5 and len(loaded) == 5
    assert loaded.elements == ["C", "H", "N", "O"]
    assert loaded.label_counts == {"energy": 5, "forces": 5, "stress": 0}
    assert loaded.base.attributes.get("num_atoms") == 135
    for original, atoms in zip(frames_300K, loaded.get_atoms()):
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
