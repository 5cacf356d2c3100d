"""``verdi data tace.dataset`` and the export of merged datasets through ``verdi archive``."""

from __future__ import annotations

import numpy as np
import pytest
from aiida import orm
from aiida.cmdline.commands.cmd_verdi import verdi
from aiida.common.exceptions import NotExistent
from aiida.engine import run_get_node
from ase.io import read, write
from click.testing import CliRunner

from tace_aiida.calculations.functions import merge_datasets
from tace_aiida.data import TrainingSetData

from .helpers.legacy_dataset import labelled_copper, legacy_dataset


def verdi_ok(*arguments: str) -> str:
    result = CliRunner().invoke(verdi, list(arguments), catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.output


def test_verdi_data_shows_and_exports_a_merged_dataset(aiida_profile, tmp_path):
    merged = merge_datasets(initial=legacy_dataset(labelled_copper(2)),
                            labelled=TrainingSetData(labelled_copper(3, start=2)).store())
    shown = verdi_ok("data", "tace.dataset", "show", str(merged.pk))
    assert "structures: 5" in shown and "storage: shards" in shown and "shards: 2" in shown
    assert "labels: energy 5, forces 5, stress 5" in shown
    forces = np.concatenate([atoms.get_forces().ravel() for atoms in labelled_copper(5)])
    assert (f"forces: RMS {np.sqrt(np.mean(forces ** 2)):.3g} eV/Å, largest {np.abs(forces).max():.3g} eV/Å, 0 of 5 "
            "structures without any force") in shown
    printed = verdi_ok("data", "tace.dataset", "export", "--format", "extxyz", str(merged.pk))
    assert printed.count("Lattice=") == 5
    verdi_ok("data", "tace.dataset", "export", str(merged.pk), "-o", str(tmp_path / "merged.extxyz"))
    frames = read(tmp_path / "merged.extxyz", ":")
    expected = labelled_copper(5)
    assert [a.info["label_uuid"] for a in frames] == [a.info["label_uuid"] for a in expected]
    assert np.allclose([a.get_forces() for a in frames], [a.get_forces() for a in expected], atol=1e-12)


def test_verdi_data_show_counts_structures_without_any_force(aiida_profile):
    from ase.build import bulk
    from ase.calculators.emt import EMT

    ideal, rattled = bulk("Cu", "fcc", a=3.61, cubic=True), bulk("Cu", "fcc", a=3.61, cubic=True)
    rattled.rattle(0.05, seed=1)
    for atoms in (ideal, rattled):
        atoms.calc = EMT()
        atoms.get_forces()
    shown = verdi_ok("data", "tace.dataset", "show", str(TrainingSetData([ideal, rattled]).store().pk))
    assert "1 of 2 structures without any force" in shown, "the ideal crystal's forces vanish by symmetry"


def content(dataset: TrainingSetData) -> dict:
    """The frames of a dataset as plain arrays, to compare across profiles."""
    frames = dataset.get_atoms()
    return {
        "positions": [a.positions for a in frames],
        "forces": [a.get_forces() for a in frames],
        "energy": [a.get_potential_energy() for a in frames],
        "stress": [a.get_stress() for a in frames],
        "info": [a.info for a in frames],
    }


@pytest.mark.slow
def test_archive_of_merged_datasets_and_a_training_imports_into_a_fresh_profile(
    aiida_config, aiida_profile, aiida_profile_factory, installed_code, tmp_path
):
    from tace_aiida.calculations.train import TrainCalculation

    shards = [legacy_dataset(labelled_copper(4))] + [TrainingSetData(labelled_copper(4, start=4 * i)).store() for i in range(1, 4)]
    merged = [merge_datasets(initial=shards[0], labelled=shards[1])]
    for shard in shards[2:]:
        merged.append(merge_datasets(previous=merged[-1], new=shard))
    parameters = {"model": {"channels": 4, "radial_mlp": [8]}, "max_epochs": 1, "batch_size": 4, "dtype": "float32",
                  "valid_fraction": 0.25}
    _, training = run_get_node(TrainCalculation, code=installed_code("tace-train"), dataset=merged[-1],
                               parameters=orm.Dict(parameters))
    assert training.is_finished_ok, training.exit_message
    assert training.outputs.metrics["num_train"] + training.outputs.metrics["num_valid"] == 16
    expected = {dataset.uuid: content(dataset) for dataset in shards + merged}
    training_uuid, final_uuid = training.uuid, merged[-1].uuid
    archive = tmp_path / "campaign.aiida"
    verdi_ok("archive", "create", "--nodes", str(merged[-1].pk), str(training.pk), "--", str(archive))

    with aiida_profile_factory(aiida_config) as fresh:
        with pytest.raises(NotExistent):
            orm.load_node(final_uuid)
        verdi_ok("--profile", fresh.name, "archive", "import", str(archive))
        for uuid, frames in expected.items():
            imported = content(orm.load_node(uuid))
            for key in ("positions", "forces", "stress"):
                assert np.array_equal(imported[key], frames[key]), (uuid, key)
            assert imported["energy"] == frames["energy"] and imported["info"] == frames["info"]
        trained_on = orm.load_node(training_uuid).inputs.dataset
        assert trained_on.uuid == final_uuid and trained_on.num_structures == 16


def written_as_another_code_writes(path, frames, energy_key: str, forces_key: str, **info) -> None:
    """Write ``frames`` with their energy and forces under the given keys (no calculator), and per-frame ``info``
    entries made by the functions in ``info`` (each called with the labelled frame)."""
    foreign = []
    for atoms in frames:
        copy = atoms.copy()
        copy.info[energy_key] = atoms.get_potential_energy()
        copy.arrays[forces_key] = atoms.get_forces()
        copy.info.update({key: entry(atoms) for key, entry in info.items()})
        foreign.append(copy)
    write(path, foreign, format="extxyz")


def test_verdi_data_imports_labels_stored_under_other_keys(aiida_profile, tmp_path):
    frames = labelled_copper(3)
    path = tmp_path / "dft.extxyz"
    written_as_another_code_writes(path, frames, "REF_energy", "REF_forces",  # the stress as a flat 3x3, as some codes
                                   REF_stress=lambda atoms: atoms.get_stress(voigt=False).reshape(9))

    refused = CliRunner().invoke(verdi, ["data", "tace.dataset", "import", str(path)])
    assert refused.exit_code != 0
    assert f"{path}, frame 0 has no 'energy' or 'forces' label" in refused.output and "'REF_energy'" in refused.output

    printed = verdi_ok("data", "tace.dataset", "import", str(path), "--index", "1:", "--energy-key", "REF_energy",
                       "--forces-key", "REF_forces", "--stress-key", "REF_stress")
    assert "2 structures of Cu from 1 file(s); labels: energy 2, forces 2, stress 2" in printed
    stored = orm.QueryBuilder().append(TrainingSetData).order_by({TrainingSetData: {"id": "desc"}}).first(flat=True)
    imported = stored.get_atoms()
    assert [a.get_potential_energy() for a in imported] == pytest.approx([a.get_potential_energy() for a in frames[1:]],
                                                                          abs=1e-12)
    assert np.allclose([a.get_forces() for a in imported], [a.get_forces() for a in frames[1:]], atol=1e-12)
    assert np.allclose([a.get_stress() for a in imported], [a.get_stress() for a in frames[1:]], atol=1e-12)
    assert "REF_energy" not in imported[0].info and "REF_forces" not in imported[0].arrays, "the labels are not doubled"


def test_verdi_data_imports_a_virial_as_a_stress(aiida_profile, tmp_path):
    """libAtoms/GAP files hold the virial (eV): the stored stress is -virial / volume."""
    frames = labelled_copper(2)
    path = tmp_path / "gap.extxyz"
    written_as_another_code_writes(path, frames, "energy", "forces",
                                   virial=lambda atoms: -atoms.get_stress(voigt=False) * atoms.get_volume())
    assert "labels: energy 2, forces 2, stress 2" in verdi_ok("data", "tace.dataset", "import", str(path))
    stored = orm.QueryBuilder().append(TrainingSetData).order_by({TrainingSetData: {"id": "desc"}}).first(flat=True)
    assert np.allclose([a.get_stress() for a in stored.get_atoms()], [a.get_stress() for a in frames], atol=1e-12)
    assert abs(frames[0].get_stress()).max() > 1e-4, "the test means something only with a stress"
