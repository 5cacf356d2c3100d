"""Graphs from the columns of a frame store: equal to the per-Atoms graphs, edge cache, errors, vesin."""

from __future__ import annotations

import warnings

import h5py
import numpy as np
import pytest
import torch
from ase import Atoms
from ase.build import bulk, fcc111, molecule
from ase.calculators.singlepoint import SinglePointCalculator
from matscipy.neighbours import neighbour_list
from tace_aiida.model import graph_store
from tace_aiida.model.config import TrainingConfig
from tace_aiida.model.data import LabelKeys, frames_to_graphs
from tace_aiida.model.frames import read_columns, read_frames, write_frames
from tace_aiida.model.graph_store import cache_directory, cache_file, file_digest, store_graphs
from tace_aiida.model.neighbours import neighbour_pairs
from tace_aiida.model.training import prepare_data

SPECIES = [1, 6, 8, 28, 29]
R_MAX = 4.0


def labelled(atoms: Atoms, seed: int, energy: bool = True, forces: bool = True, stress: bool = True) -> Atoms:
    """``atoms`` rattled, with random labels (eV, eV/Å, Voigt eV/Å^3) on a calculator, each where asked."""
    rng = np.random.default_rng(seed)
    atoms.positions += rng.normal(0, 0.03, atoms.positions.shape)
    labels = {"energy": rng.normal(), "forces": rng.normal(size=(len(atoms), 3)), "stress": rng.normal(size=6)}
    atoms.calc = SinglePointCalculator(atoms, **{key: value for key, value in labels.items()
                                                 if {"energy": energy, "forces": forces, "stress": stress}[key]})
    return atoms


def mixed_frames() -> list[Atoms]:
    """Bulk with stress, two species, a molecule without cell, a slab (pbc T, T, F), frames lacking labels."""
    alloy = bulk("Cu", "fcc", a=3.6, cubic=True) * (2, 1, 1)
    alloy.numbers[::3] = 28
    slab = fcc111("Cu", size=(2, 2, 3), vacuum=5.0)
    slab.pbc = [True, True, False]
    slab.info.clear()
    return [
        labelled(bulk("Cu", "fcc", a=3.6, cubic=True) * 2, 0),
        labelled(alloy, 1),
        labelled(molecule("CH3OH"), 2),
        labelled(slab, 3),
        labelled(bulk("Ni", "fcc", a=3.5), 4, energy=False),
        labelled(bulk("Cu", "fcc", a=3.6, orthorhombic=True), 5, forces=False),
        labelled(molecule("H2O"), 6, energy=False, forces=False, stress=False),
        labelled(bulk("Cu", "bcc", a=2.9) * (2, 1, 1), 7, stress=False),
    ]


def edge_set(graph: dict) -> list:
    senders, receivers = graph["edge_index"].tolist()
    return sorted(zip(senders, receivers, map(tuple, graph["shifts"].tolist()), strict=True))


def assert_same_graphs(found: list[dict], expected: list[dict]) -> None:
    """Every key, dtype, shape and value equal; edges compared as sets of (sender, receiver, shift)."""
    assert len(found) == len(expected)
    for got, want in zip(found, expected, strict=True):
        assert got.keys() == want.keys()
        for key in want:
            assert got[key].dtype == want[key].dtype and got[key].shape == want[key].shape, key
            if key not in ("edge_index", "shifts"):
                assert torch.equal(got[key], want[key]), key
        assert edge_set(got) == edge_set(want)


@pytest.fixture
def store(tmp_path):
    path = tmp_path / "frames.h5"
    write_frames(path, mixed_frames())
    return path


@pytest.fixture
def counted_neighbours(monkeypatch):
    """Count the calls of the neighbour list that :mod:`.graph_store` makes."""
    calls = []

    def counting(*args, **kwargs):
        calls.append(args)
        return original(*args, **kwargs)

    original = graph_store.cell_pairs
    monkeypatch.setattr(graph_store, "cell_pairs", counting)
    return calls


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_graphs_from_columns_equal_the_graphs_from_atoms(store, tmp_path, dtype):
    expected = frames_to_graphs(read_frames(store), str(store), SPECIES, R_MAX, LabelKeys(), dtype)
    assert [bool(g["has_stress"]) for g in expected] == [True, True, False, False, True, True, False, False]
    assert [bool(g["has_energy"]) for g in expected] == [True, True, True, True, False, True, False, True]
    found = store_graphs(store, read_columns(store), SPECIES, R_MAX, LabelKeys(), dtype, tmp_path / "cache")
    assert_same_graphs(found, expected)
    assert_same_graphs(store_graphs(store, read_columns(store), SPECIES, R_MAX, dtype=dtype),
                       frames_to_graphs(read_frames(store), str(store), SPECIES, R_MAX, dtype=dtype))


def test_labels_under_other_keys_and_partial_info_equal_the_graphs_from_atoms(tmp_path):
    frames = mixed_frames()[:4]
    for index, atoms in enumerate(frames):
        atoms.info["REF_stress"] = np.arange(9.0).reshape(3, 3) + index
        if index != 2:
            atoms.info["REF_energy"] = float(index)
            atoms.new_array("REF_forces", np.full((len(atoms), 3), index, dtype=np.float32))
    path = tmp_path / "ref.h5"
    write_frames(path, frames)
    keys = LabelKeys("REF_energy", "REF_forces", "REF_stress")
    expected = frames_to_graphs(read_frames(path), str(path), SPECIES, R_MAX, keys)
    assert_same_graphs(store_graphs(path, read_columns(path), SPECIES, R_MAX, keys), expected)


def test_born_charges_of_some_frames_are_stored_for_their_atoms_only(tmp_path):
    """Frames with Born charges get them as from Atoms; the others carry none, and the one tensor behind the
    labelled frames' views holds their atoms only (9 numbers per labelled atom, not per atom of the set)."""
    frames = mixed_frames()
    for index in (1, 3):
        count = len(frames[index])
        frames[index].new_array("born_effective_charges", np.arange(9.0 * count).reshape(count, 9) + index)
    path = tmp_path / "born.h5"
    write_frames(path, frames)
    expected = frames_to_graphs(read_frames(path), str(path), SPECIES, R_MAX, LabelKeys(), torch.float64)
    found = store_graphs(path, read_columns(path), SPECIES, R_MAX, LabelKeys(), torch.float64)
    assert_same_graphs(found, expected)
    assert [index for index, graph in enumerate(found) if "born_charges" in graph] == [1, 3]
    labelled_atoms = len(frames[1]) + len(frames[3])
    assert found[3]["born_charges"].untyped_storage().nbytes() == labelled_atoms * 9 * 8


def test_graphs_are_views_of_few_tensors(store):
    graphs = store_graphs(store, read_columns(store), SPECIES, R_MAX, LabelKeys())
    for key in ("positions", "edge_index", "forces", "energy"):
        assert len({g[key].untyped_storage().data_ptr() for g in graphs}) == 1
    assert all(g["edge_index"].is_contiguous() for g in graphs)


def test_second_build_reads_the_cache_and_skips_the_neighbour_list(store, tmp_path, counted_neighbours):
    cache = tmp_path / "cache"
    first = store_graphs(store, read_columns(store), SPECIES, R_MAX, LabelKeys(), cache_dir=cache)
    assert len(counted_neighbours) == 8 and len(list(cache.iterdir())) == 1
    copy = tmp_path / "renamed_copy.h5"
    copy.write_bytes(store.read_bytes())
    second = store_graphs(copy, read_columns(copy), SPECIES, R_MAX, LabelKeys(), cache_dir=cache)
    assert len(counted_neighbours) == 8
    for got, want in zip(second, first, strict=True):
        assert all(torch.equal(got[key], want[key]) for key in want)
    store_graphs(store, read_columns(store), SPECIES, R_MAX + 0.5, LabelKeys(), cache_dir=cache)
    assert len(counted_neighbours) == 16 and len(list(cache.iterdir())) == 2


@pytest.mark.parametrize("damage", ["truncate", "flip", "foreign", "bounds", "other store"])
def test_a_damaged_cache_file_is_rebuilt(store, tmp_path, counted_neighbours, damage):
    cache = tmp_path / "cache"
    expected = store_graphs(store, read_columns(store), SPECIES, R_MAX, LabelKeys(), cache_dir=cache)
    target = cache_file(cache, file_digest(store), R_MAX)
    if damage == "truncate":
        target.write_bytes(target.read_bytes()[:1000])
    elif damage == "foreign":
        with h5py.File(target, "w") as handle:
            handle.attrs["format"] = "something else"
    elif damage == "other store":
        other = tmp_path / "other.h5"
        write_frames(other, mixed_frames()[::-1])
        store_graphs(other, read_columns(other), SPECIES, R_MAX, LabelKeys(), cache_dir=cache)
        target.write_bytes(cache_file(cache, file_digest(other), R_MAX).read_bytes())
    else:
        with h5py.File(target, "a") as handle:
            pairs = handle["pairs"]
            pairs[0] = pairs[0] + 1 if damage == "flip" else 250
    calls = len(counted_neighbours)
    found = store_graphs(store, read_columns(store), SPECIES, R_MAX, LabelKeys(), cache_dir=cache)
    assert len(counted_neighbours) == calls + 8
    assert_same_graphs(found, expected)
    store_graphs(store, read_columns(store), SPECIES, R_MAX, LabelKeys(), cache_dir=cache)
    assert len(counted_neighbours) == calls + 8


def test_an_unwritable_cache_only_warns(store, tmp_path):
    blocked = tmp_path / "a_file"
    blocked.write_text("not a folder")
    expected = frames_to_graphs(read_frames(store), str(store), SPECIES, R_MAX, LabelKeys())
    with pytest.warns(UserWarning, match="graph edges not cached in .*a_file"):
        found = store_graphs(store, read_columns(store), SPECIES, R_MAX, LabelKeys(), cache_dir=blocked / "graphs")
    assert_same_graphs(found, expected)


def test_cache_setting_environment_and_off(monkeypatch, tmp_path):
    monkeypatch.delenv(graph_store.CACHE_ENV, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert cache_directory() == tmp_path / "tace-aiida" / "graphs"
    monkeypatch.setenv(graph_store.CACHE_ENV, str(tmp_path / "env"))
    assert cache_directory() == tmp_path / "env"
    assert cache_directory(str(tmp_path / "setting")) == tmp_path / "setting"
    assert cache_directory("off") is None
    monkeypatch.setenv(graph_store.CACHE_ENV, "off")
    assert cache_directory() is None


def test_training_reads_stores_through_the_cache(store, tmp_path, counted_neighbours):
    settings = {"train_file": "frames.h5", "graph_cache_dir": "cache", "forces_weight": 0.0, "model": {"r_max": R_MAX}}
    config = TrainingConfig.from_dict(settings, base_dir=tmp_path)
    with pytest.raises(ValueError, match="frames.h5, frame 4: no energy label"):
        prepare_data(config)
    assert len(counted_neighbours) == 8 and len(list((tmp_path / "cache").iterdir())) == 1


def overlapping_copper(tmp_path, bad: int, make) -> str:
    frames = [labelled(bulk("Cu", "fcc", a=3.6, cubic=True), seed) for seed in range(4)]
    frames[bad] = make(frames[bad])
    path = tmp_path / "bad.h5"
    write_frames(path, frames)
    return path


def moved(atoms: Atoms) -> Atoms:
    atoms.positions[1] = atoms.positions[0] + 0.1
    return atoms


def squeezed(atoms: Atoms) -> Atoms:
    atoms.set_cell(atoms.cell * 0.3)
    return atoms


def gold(atoms: Atoms) -> Atoms:
    atoms.numbers[2] = 79
    return atoms


def not_finite(atoms: Atoms) -> Atoms:
    atoms.positions[3, 1] = np.nan
    return atoms


@pytest.mark.parametrize(("make", "message"), [
    (moved, r"bad.h5, frame 2 \(Cu4\): atoms 0 \(Cu\) and 1 \(Cu\) are 0.1\d* Å apart, less than 1.32 Å"),
    (squeezed, r"bad.h5, frame 1 \(Cu4\): its periodic cell \(pbc \[True, True, True\]\) has a volume of 1.26 Å\^3"),
    (gold, r"bad.h5, frame 3 \(AuCu3\): AuCu3 contains Au, which the model was not trained on \(it knows H, C, O, Ni, Cu\)"),
    (not_finite, r"bad.h5, frame 0 \(Cu4\): atom 3 has position \[.*, nan, .*\] Å"),
])
def test_errors_name_the_file_the_frame_and_its_formula(tmp_path, make, message):
    bad = {moved: 2, squeezed: 1, gold: 3, not_finite: 0}[make]
    path = overlapping_copper(tmp_path, bad, make)
    with pytest.raises(ValueError, match=message):
        frames_to_graphs(read_frames(path), str(path), SPECIES, R_MAX, LabelKeys())
    with pytest.raises(ValueError, match=message):
        store_graphs(path, read_columns(path), SPECIES, R_MAX, LabelKeys(), cache_dir=tmp_path / "cache")


def test_non_finite_label_names_the_frame(tmp_path):
    frames = mixed_frames()[:3]
    frames[1].info["REF_energy"] = np.inf
    path = tmp_path / "labels.h5"
    write_frames(path, frames)
    with pytest.raises(ValueError, match=r"labels.h5, frame 1 \(Cu5Ni3\): its 'REF_energy' label is not finite: inf"):
        store_graphs(path, read_columns(path), SPECIES, R_MAX, LabelKeys(energy="REF_energy"))


def matscipy_edges(atoms: Atoms, cutoff: float) -> list:
    if atoms.pbc.any():
        found = neighbour_list("ijS", atoms, cutoff)
    else:
        reach = cutoff + 1.0
        found = neighbour_list("ijS", positions=atoms.positions, cell=np.diag(np.ptp(atoms.positions, axis=0) + 2 * reach),
                               pbc=[False] * 3, cell_origin=atoms.positions.min(axis=0) - reach, cutoff=cutoff)
    return sorted(zip(found[0].tolist(), found[1].tolist(), map(tuple, found[2].tolist()), strict=True))


@pytest.mark.parametrize(("name", "atoms", "cutoff"), [
    ("periodic", labelled(bulk("Cu", "fcc", a=3.6, cubic=True) * 2, 0), 5.0),
    ("skewed", Atoms("CuNi", positions=[[0, 0, 0], [1.2, 0.3, 0.4]], cell=[[2.5, 0, 0], [2.4, 2.5, 0], [0.3, 1.1, 2.6]], pbc=True), 5.0),
    ("small cell, many images", bulk("Cu", "fcc", a=3.6), 7.5),
    ("open", molecule("C6H6"), 3.0),
])
def test_vesin_edges_equal_matscipy(name, atoms, cutoff):
    receivers, senders, shifts = neighbour_pairs("ijS", atoms, cutoff)
    found = sorted(zip(receivers.tolist(), senders.tolist(), map(tuple, shifts.tolist()), strict=True))
    assert found == matscipy_edges(atoms, cutoff), name
    assert len(found) > 0


def test_no_warning_when_the_cache_works(store, tmp_path):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        store_graphs(store, read_columns(store), SPECIES, R_MAX, LabelKeys(), cache_dir=tmp_path / "cache")
