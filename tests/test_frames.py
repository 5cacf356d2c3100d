"""The HDF5 frame store: round trips, partial labels and metadata, and refusal of foreign files."""

from __future__ import annotations

import io
import os
import pickle

import h5py
import numpy as np
import pytest
from ase.build import bulk, molecule
from ase.calculators.emt import EMT
from ase.calculators.singlepoint import SinglePointCalculator
from tace_aiida.model.frames import FORMAT, VERSION, FrameFormatError, read_columns, read_frames, write_frames


def labelled_copper(seed: int = 0):
    atoms = bulk("Cu", "fcc", a=3.6) * (2, 2, 1)
    atoms.rattle(0.05, seed=seed)
    atoms.calc = EMT()
    atoms.get_forces(), atoms.get_stress()
    atoms.new_array("predicted_forces", np.random.default_rng(seed).normal(size=(len(atoms), 3)))
    atoms.info.update(label_uuid="6c1f-é", source_frame=3, temperature=300.0, selected=True, extra={"k": [1, 2]})
    return atoms


def round_trip(frames, **metadata):
    buffer = io.BytesIO()
    write_frames(buffer, frames, metadata)
    return read_frames(io.BytesIO(buffer.getvalue())), buffer.getvalue()


def test_round_trip_keeps_labels_arrays_and_info():
    original = labelled_copper()
    (loaded,), _ = round_trip([original])
    assert np.array_equal(loaded.numbers, original.numbers) and np.array_equal(loaded.positions, original.positions)
    assert np.array_equal(loaded.cell[:], original.cell[:]) and loaded.pbc.all()
    assert loaded.get_potential_energy() == original.get_potential_energy()
    assert np.array_equal(loaded.get_forces(), original.get_forces())
    assert np.allclose(loaded.get_stress(), original.get_stress(), rtol=0, atol=1e-15)
    assert np.array_equal(loaded.arrays["predicted_forces"], original.arrays["predicted_forces"])
    assert loaded.info == original.info


def test_partial_labels_and_entries_stay_absent_where_missing(frames_300K):
    labelled, water = labelled_copper(), molecule("H2O")
    water.info["temperature"] = 12.5
    energy_only = bulk("Cu")
    energy_only.calc = SinglePointCalculator(energy_only, energy=-3.5)
    loaded, _ = round_trip([labelled, water, energy_only, frames_300K[0]])
    assert loaded[1].calc is None and loaded[1].info == {"temperature": 12.5} and "predicted_forces" not in loaded[1].arrays
    assert loaded[2].calc.results == {"energy": -3.5}
    assert np.array_equal(loaded[3].get_forces(), frames_300K[0].get_forces())
    columns = read_columns(io.BytesIO(round_trip([labelled, water, energy_only])[1]))
    assert columns.label_counts() == {"energy": 2, "forces": 1, "stress": 1}
    assert list(columns.offsets) == [0, 4, 7, 8] and columns.positions.shape == (8, 3)


def test_frames_whose_forces_all_vanish_are_counted(frames_300K):
    """An ideal crystal's EMT forces vanish (below 1e-6 eV/Å); unlabelled and energy-only frames are not counted."""
    ideal, displaced = bulk("Cu", "fcc", a=3.61, cubic=True), bulk("Cu", "fcc", a=3.61, cubic=True)
    displaced.positions[0, 0] += 1e-4  # a force of about 1e-3 eV/Å on some atoms
    for atoms in (ideal, displaced):
        atoms.calc = EMT()
        atoms.get_forces()
    energy_only = bulk("Cu")
    energy_only.calc = SinglePointCalculator(energy_only, energy=-3.5)
    frames = [ideal, bulk("Cu").repeat(2), ideal, energy_only, displaced, frames_300K[0], ideal]
    columns = read_columns(io.BytesIO(round_trip(frames)[1]))
    assert columns.has_forces().tolist() == [True, False, True, False, True, True, True]
    assert columns.force_free_count() == 3
    assert 1e-6 < np.abs(displaced.get_forces()).max() < 1e-2 and np.abs(ideal.get_forces()).max() < 1e-6


def test_non_finite_or_misshapen_labels_are_refused():
    atoms = bulk("Cu")
    atoms.calc = SinglePointCalculator(atoms, energy=float("nan"))
    with pytest.raises(ValueError, match="frame 0 .*energy label is not finite"):
        write_frames(io.BytesIO(), [atoms])
    atoms.calc = SinglePointCalculator(atoms, forces=np.zeros((2, 3)))
    with pytest.raises(ValueError, match=r"forces of shape \(2, 3\), expected \(1, 3\)"):
        write_frames(io.BytesIO(), [atoms])


def test_the_same_frames_give_the_same_bytes():
    assert round_trip([labelled_copper()])[1] == round_trip([labelled_copper()])[1]


class Exploit:
    def __reduce__(self):
        return (open, ("/tmp/tace-frames-pwned", "w"))


def opaque_pickle() -> np.ndarray:
    """A pickle whose loading would create the sentinel file, as one opaque HDF5 value."""
    return np.array([np.void(pickle.dumps(Exploit()))])


def crafted(tmp_path, edit) -> str:
    path = tmp_path / "crafted.h5"
    write_frames(path, [labelled_copper()])
    with h5py.File(path, "a") as handle:
        edit(handle)
    return str(path)


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda h: h["info"].create_dataset("payload", data=opaque_pickle()), "'info/payload' has kind None"),
        (lambda h: (h["info"].create_dataset("payload", data=opaque_pickle()),
                    h["info/payload"].attrs.__setitem__("kind", "json")), "expected UTF-8 text"),
        (lambda h: (h["info"].create_dataset("payload", data=[pickle.dumps(Exploit()).hex()], dtype=h5py.string_dtype()),
                    h["info/payload"].attrs.__setitem__("kind", "pickle")), "kind 'pickle'"),
        (lambda h: (h["info"].create_dataset("payload", data=[h.ref], dtype=h5py.ref_dtype),
                    h["info/payload"].attrs.__setitem__("kind", "number")), "expected numbers"),
        (lambda h: h.attrs.__setitem__("version", VERSION + 1), "format version 2"),
        (lambda h: h.attrs.__setitem__("format", "pickle"), "format attribute is 'pickle'"),
        (lambda h: h["offsets"].__setitem__(1, 99), r"'numbers' has shape \(4,\), expected \(99,\)"),
        (lambda h: (h.__delitem__("cell"), h.create_dataset("cell", data=np.zeros((1, 9)))), r"'cell' has shape \(1, 9\)"),
    ],
)
def test_a_crafted_file_is_refused_and_nothing_runs(tmp_path, edit, message):
    sentinel = "/tmp/tace-frames-pwned"
    path = crafted(tmp_path, edit)
    with pytest.raises(FrameFormatError, match=message):
        read_frames(path)
    assert not os.path.exists(sentinel)


def test_a_foreign_file_is_refused(tmp_path):
    path = tmp_path / "not.h5"
    path.write_text("not hdf5")
    with pytest.raises(FrameFormatError, match="not an HDF5 file"):
        read_columns(path)
    with h5py.File(tmp_path / "other.h5", "w") as handle:
        handle.create_dataset("x", data=[1])
    with pytest.raises(FrameFormatError, match=f"expected '{FORMAT}'"):
        read_columns(tmp_path / "other.h5")


def test_training_reads_frame_stores_and_lists_of_files(tmp_path, frames_300K):
    from ase.io import write
    from tace_aiida.model.config import TrainingConfig
    from tace_aiida.model.training import read_training_files

    write_frames(tmp_path / "a.h5", frames_300K[:3])
    write(tmp_path / "b.extxyz", frames_300K[3:5])
    config = TrainingConfig.from_dict({"train_file": ["a.h5", "b.extxyz"], "test_file": "a.h5"}, base_dir=tmp_path)
    assert config.train_file == [str(tmp_path / "a.h5"), str(tmp_path / "b.extxyz")]
    frames = read_training_files(config.train_file)
    assert [a.get_potential_energy() for a in frames] == [a.get_potential_energy() for a in frames_300K[:5]]
    assert len(read_training_files(config.test_file)) == 3
    write_frames(tmp_path / "empty.h5", [])
    with pytest.raises(ValueError, match="holds no structures"):
        read_training_files([str(tmp_path / "empty.h5")])
