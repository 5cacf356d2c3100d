"""Bad input to the model side and the standalone tools: refused before any work, with the value named."""

from __future__ import annotations

import json
import math
import os
import pickle
import re
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from ase import Atoms
from ase.build import bulk, fcc111
from ase.calculators.emt import EMT
from ase.calculators.singlepoint import SinglePointCalculator
from ase.cluster import Octahedron
from ase.io import write
from tace_aiida.model import md
from tace_aiida.model.checkpoint import CheckpointError, read_checkpoint, save_checkpoint
from tace_aiida.model.cli import eval_main, train_main
from tace_aiida.model.config import TrainingConfig
from tace_aiida.model.data import LabelKeys, atoms_to_graph, collate, frames_to_graphs
from tace_aiida.model.potential import CartesianTensorPotential
from tace_aiida.model.restart import RestartError, load_restart, restart_epoch
from tace_aiida.model.training import loss_function, prepare_data, train
from tace_aiida.model.validation import read_structures

from tace_aiida.labelling import runner
from tace_aiida.schedulers.job_state import DaskJobState

from .conftest import periodic_cell, small_model


@pytest.mark.parametrize("settings,message", [
    ({"max_epochs": "ten"}, "training setting max_epochs: 'ten' is not an integer"),
    ({"max_epochs": 0}, "training setting max_epochs=0 must be >= 1"),
    ({"max_epochs": -3}, "training setting max_epochs=-3 must be >= 1"),
    ({"lr": -0.01}, "training setting lr=-0.01 must be > 0"),
    ({"lr": "fast"}, "training setting lr: 'fast' is not a number"),
    ({"valid_fraction": 1.0}, "training setting valid_fraction=1.0 must be in \\[0.0, 1.0\\)"),
    ({"batch_size": 2.5}, "training setting batch_size: 2.5 is not an integer"),
    ({"bootstrap": "yes"}, "training setting bootstrap: 'yes' is not true or false"),
    ({"seed": True}, "training setting seed: True is not an integer"),
    ({"ema_decay": 1.5}, "training setting ema_decay=1.5 must be in \\[0.0, 1.0\\)"),
    ({"device": "gpu"}, "training setting device='gpu' must be 'auto' or a torch device"),
    ({"dtype": "float16"}, "training setting dtype='float16' must be one of 'float32', 'float64'"),
    ({"atomic_energies": {"H": -13.6}}, "training setting atomic_energies: key 'H' is not an atomic number"),
    ({"energy_weight": 0, "forces_weight": 0}, "energy_weight and forces_weight are both 0"),
    ({"epochs": 3}, "unknown training settings \\['epochs'\\]"),
    ({"model": {"chanels": 3}}, "unknown model settings \\['chanels'\\]"),
    ({"model": {"channels": "8"}}, "model setting channels: '8' is not an integer"),
    ({"model": {"r_max": 0}}, "model setting r_max=0 must be > 0"),
    ({"model": {"radial_mlp": [32, 0]}}, "model setting radial_mlp=\\[32, 0\\] must be a list of integers >= 1"),
    ({"model": {"max_hidden_rank": 4}}, "model settings: max_hidden_rank=4 must lie in 0..max_edge_rank=3"),
])
def test_training_settings_are_checked_by_type_and_range(settings, message):
    with pytest.raises(ValueError, match=message):
        TrainingConfig.from_dict({"train_file": "train.xyz", **settings})


def test_settings_from_yaml_and_json_keep_their_types():
    config = TrainingConfig.from_dict({"train_file": "t.xyz", "lr": 1, "atomic_energies": {"1": -13.6},
                                       "model": {"radial_mlp": [8, 8]}, "ema_decay": None})
    assert config.atomic_energies == {1: -13.6}


def test_yaml_exponent_is_a_number(tmp_path):
    path = tmp_path / "train.yaml"
    path.write_text("train_file: t.xyz\nlr: 1e-3\nweight_decay: 5E-7\n")
    config = TrainingConfig.from_yaml(path)
    assert (config.lr, config.weight_decay) == (0.001, 5e-7)


@pytest.mark.parametrize("line,message", [
    ('max_epochs: "ten"', "train.yaml: training setting max_epochs: 'ten' is not an integer"),
    ("max_epochs: 0", "train.yaml: training setting max_epochs=0 must be >= 1"),
])
def test_tace_train_prints_one_line_and_exits_non_zero(tmp_path, capsys, line, message):
    config = tmp_path / "train.yaml"
    config.write_text(f"train_file: train.xyz\n{line}\n")
    with pytest.raises(SystemExit) as exit_info:
        train_main([str(config)])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.splitlines() == [f"tace-train: {tmp_path}/{message}"]


def labelled_copies(frames, count: int = 10) -> list[Atoms]:
    """Independent copies of the first ``count`` frames with their energy and forces labels."""
    copies = []
    for atoms in frames[:count]:
        copy = atoms.copy()
        copy.calc = SinglePointCalculator(copy, energy=atoms.get_potential_energy(), forces=atoms.get_forces().copy())
        copies.append(copy)
    return copies


def train_on(tmp_path, frames, **settings) -> dict:
    path = tmp_path / "train.xyz"
    write(path, frames, format="extxyz")
    return train(TrainingConfig.from_dict({"train_file": str(path), "output_dir": str(tmp_path / "out"),
                                           "max_epochs": 1, "progress_bar": False, **settings}))


def break_positions(frames):
    frames[4].positions[5] = frames[4].positions[2] + [0.01, 0.0, 0.0]


def break_cell(frames):
    frames[2].pbc = True
    frames[2].cell = [[10.0, 0.0, 0.0], [0.0, 10.0, 0.0], [10.0, 10.0, 0.0]]


def break_forces(frames):
    frames[7].calc.results["forces"][3, 1] = np.nan


def drop_forces(frames):
    frames[6].calc = SinglePointCalculator(frames[6], energy=frames[6].get_potential_energy())


def break_energy(frames):
    frames[1].calc.results["energy"] = np.inf


@pytest.mark.parametrize("damage,message", [
    (break_positions, "train.xyz, frame 4 \\(C12H12N2O\\): atoms 2 \\(C\\) and 5 \\(O\\) are 0.01 Å apart, less than "
                      "0.71 Å \\(0.5 times the sum of their covalent radii\\): overlapping atoms"),
    (break_cell, "train.xyz, frame 2 \\(C12H12N2O\\): its periodic cell \\(pbc \\[True, True, True\\]\\) has a volume of "
                 "0 Å\\^3 for 27 atoms, less than 1.0 Å\\^3 per atom"),
    (break_forces, "train.xyz, frame 7 \\(C12H12N2O\\): its 'forces' label is not finite at atom 3: \\[-0.94055\\d*, nan, 0.7214"),
    (drop_forces, "train.xyz, frame 6: no forces label under 'forces' \\(1 of 10 frames lack one; forces_weight: 0"),
    (break_energy, "train.xyz, frame 1 \\(C12H12N2O\\): its 'energy' label is not finite: inf"),
])
def test_bad_structures_and_labels_name_the_frame_and_change_nothing(tmp_path, frames_300K, damage, message):
    frames = labelled_copies(frames_300K)
    damage(frames)
    stored = tmp_path / "out" / "model.pt"
    stored.parent.mkdir()
    stored.write_bytes(b"the model of an earlier run")
    with pytest.raises(ValueError, match=message):
        train_on(tmp_path, frames)
    assert stored.read_bytes() == b"the model of an earlier run"
    assert sorted(p.name for p in stored.parent.iterdir()) == ["model.pt"]


def test_frames_without_forces_train_when_forces_are_not_weighed(tmp_path, frames_300K):
    frames = labelled_copies(frames_300K, 4)
    drop_forces_everywhere = [SinglePointCalculator(a, energy=a.get_potential_energy()) for a in frames]
    for atoms, calc in zip(frames, drop_forces_everywhere, strict=True):
        atoms.calc = calc
    path = tmp_path / "train.xyz"
    write(path, frames, format="extxyz")
    config = TrainingConfig.from_dict({"train_file": str(path), "forces_weight": 0, "valid_fraction": 0.25})
    data = prepare_data(config)
    assert not any(bool(g["has_forces"]) for g in data.train + data.valid)


@pytest.mark.parametrize("text,message", [
    ("", "train.xyz holds no structures"),
    ("\n\n", "train.xyz holds no structures"),
    ("2\nProperties=species:S:1:pos:R:3\nH 0 0 0\nH 0.7 0 0\n2\nProperties=species:S:1:pos:R:3\nH 0 0 0\nH 1 0\n",
     "train.xyz: cannot read frame 1 \\(from line 5\\): ValueError: "),
    ("3\nProperties=species:S:1:pos:R:3\nH 0 0 0\nH 1 0 0\n", "train.xyz: cannot read frame 0 \\(from line 1\\): XYZError: "),
    ("two\n\nH 0 0 0\nH 1 0 0\n", "train.xyz: cannot read frame 0 \\(from line 1\\): XYZError: .*'two"),
    ("0\n\n", "train.xyz, frame 0 \\(\\): it has no atoms"),
])
def test_empty_and_malformed_files_are_named(tmp_path, text, message):
    path = tmp_path / "train.xyz"
    path.write_text(text)
    with pytest.raises(ValueError, match=message):
        prepare_data(TrainingConfig.from_dict({"train_file": str(path)}))
    with pytest.raises(ValueError, match="absent.xyz does not exist"):
        prepare_data(TrainingConfig.from_dict({"train_file": str(tmp_path / "absent.xyz")}))


@pytest.fixture
def checkpoint(tmp_path) -> str:
    """A small untrained H, C, N, O model saved as a checkpoint."""
    return str(save_checkpoint(tmp_path / "model.pt", small_model()))


def test_tace_eval_names_an_unknown_element_and_unlabelled_data(tmp_path, capsys, checkpoint, frames_300K):
    frames = labelled_copies(frames_300K, 3)
    frames[2].numbers[0] = 29
    path = tmp_path / "test.xyz"
    write(path, frames, format="extxyz")
    with pytest.raises(SystemExit) as exit_info:
        eval_main(["--checkpoint", checkpoint, "--data", str(path)])
    assert exit_info.value.code == 1
    assert capsys.readouterr().err.splitlines() == [
        f"tace-eval: {path}, frame 2 (C11H12CuN2O): C11H12CuN2O contains Cu, which the model was not trained on "
        "(it knows H, C, N, O)"]
    write(path, [Atoms(a.numbers, a.positions) for a in frames_300K[:2]], format="extxyz")
    with pytest.raises(SystemExit):
        eval_main(["--checkpoint", checkpoint, "--data", str(path)])
    assert "has no labels under 'energy', 'forces', 'stress', 'dipole', 'polarizability', 'born_effective_charges'" in capsys.readouterr().err


def catalysis_frames() -> list[Atoms]:
    """EMT-labelled Cu: rattled bulk cells with stress, clusters (no cell) and slabs (periodic in x, y)
    whose stress label, present as some codes write one, must be ignored."""
    frames = []
    for seed in range(6):
        bulk_cell = bulk("Cu", "fcc", a=3.55 + 0.04 * seed, cubic=True)
        cluster = Octahedron("Cu", 2)
        cluster.cell, cluster.pbc = np.zeros((3, 3)), False
        slab = fcc111("Cu", (2, 2, 2), vacuum=4.0)
        for atoms in (bulk_cell, cluster, slab)[: 3 if seed < 2 else 1]:
            atoms.rattle(0.05, seed=seed)
            atoms.calc = EMT()
            labels = {"energy": atoms.get_potential_energy(), "forces": atoms.get_forces()}
            if atoms.pbc.any():
                labels["stress"] = atoms.get_stress()
            atoms.calc = SinglePointCalculator(atoms, **labels)
            frames.append(atoms)
    return frames


def test_loss_of_molecules_slabs_and_cells_together_is_finite(float64):
    frames = catalysis_frames()
    graphs = [atoms_to_graph(a, [29], 3.0, LabelKeys()) for a in frames]
    assert [bool(g["has_stress"]) for g in graphs] == [a.pbc.all() for a in frames] == [True, False, False] * 2 + [True] * 4
    batch = collate(graphs)
    model = small_model(atomic_numbers=[29], atomic_energies=[0.0], r_max=3.0, max_edge_rank=1, correlation=2,
                        num_interactions=1).train()
    out = model(batch, compute_forces=True, compute_stress=True, training=True)
    assert not torch.isfinite(out.stress).all(), "a cluster's stress divides by its zero volume"
    config = TrainingConfig.from_dict({"train_file": "x.xyz", "stress_weight": 10.0})
    loss = loss_function(out, batch, config)
    loss.backward()
    assert torch.isfinite(loss)
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
    periodic = batch["has_stress"].bool()
    stress_only = loss - loss_function(out, batch, replace(config, stress_weight=0.0))
    expected = 10.0 * ((out.stress[periodic] - batch["stress"][periodic]) ** 2).sum() / batch["stress"].numel()
    assert stress_only.item() == pytest.approx(expected.item(), rel=1e-9)


@pytest.mark.slow
def test_a_set_of_molecules_slabs_and_cells_trains_and_learns_stress(tmp_path):
    frames = catalysis_frames()
    write(tmp_path / "train.xyz", frames, format="extxyz")
    write(tmp_path / "valid.xyz", frames[:3] + frames[-2:], format="extxyz")
    summary = train(TrainingConfig.from_dict({
        "train_file": str(tmp_path / "train.xyz"), "valid_file": str(tmp_path / "valid.xyz"),
        "output_dir": str(tmp_path), "model": {"channels": 4, "radial_mlp": [8], "r_max": 3.0, "num_interactions": 1,
                                               "max_edge_rank": 1, "correlation": 2},
        "max_epochs": 15, "batch_size": 5, "progress_bar": False, "stress_weight": 100.0, "ema_decay": None,
    }))
    records = [json.loads(line) for line in open(summary["metrics_file"])]
    assert len(records) == 15 and all(math.isfinite(r["train_loss"]) for r in records)
    stress_rmse = [r["valid_stress_rmse"] for r in records]
    print("validation stress RMSE (eV/Å^3) per epoch:", stress_rmse)
    # Learned: the stress error halves during the run. Not asked of the last epochs: at this tiny size and
    # lr 0.01 the stress error falls to a quarter and then trades off against the forces (with either
    # message normalisation; `mean` only gets there later).
    assert min(stress_rmse) < 0.5 * stress_rmse[0]


def md_folder(folder: Path, atoms: Atoms, members: dict[str, CartesianTensorPotential], **settings) -> Path:
    """A tace-md job folder: the members as checkpoints, ``atoms`` as the start, a 2-step NVE run."""
    for name, model in members.items():
        save_checkpoint(folder / name, model)
    (folder / md.SETTINGS).write_text(json.dumps({"checkpoints": list(members), "ensemble": "nve", "steps": 2,
                                                  "save_interval": 1, "device": "cpu", **settings}))
    write(folder / md.STRUCTURE, atoms, format="extxyz")
    (folder / md.TRAJECTORY).write_bytes(b"an earlier trajectory")
    return folder


def truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[:3000])


def overlapping(atoms: Atoms) -> Atoms:
    atoms = atoms.copy()
    atoms.positions[3] = atoms.positions[0] + [0.0, 0.02, 0.0]
    return atoms


def with_copper(atoms: Atoms) -> Atoms:
    atoms = atoms.copy()
    atoms.numbers[1] = 29
    return atoms


@pytest.mark.parametrize("start,second,settings,damage,message", [
    (with_copper, {}, {}, None, "structure.extxyz \\(\\w*Cu\\w*\\): \\w*Cu\\w* contains Cu, which the model was not "
                                "trained on \\(it knows H, C, N, O\\)"),
    (overlapping, {}, {}, None, "structure.extxyz \\(\\w+\\): atoms 0 \\(\\w\\) and 3 \\(\\w\\) are 0.02 Å apart"),
    (None, {"r_max": 4.0}, {}, None, "ensemble members {folder}/m0.pt and {folder}/m1.pt differ in r_max: 5.0 and 4.0"),
    (None, {"atomic_numbers": [1, 6, 8], "atomic_energies": [0.0, 0.0, 0.0]}, {}, None,
     "ensemble members {folder}/m0.pt and {folder}/m1.pt differ in atomic_numbers: \\[1, 6, 7, 8\\] and \\[1, 6, 8\\]"),
    (None, {}, {}, truncate, "{folder}/m1.pt is not a readable tace-aiida checkpoint"),
    (None, {}, {"temperature": -10}, None, "{folder}/md.json: MD setting temperature=-10 must be >= 0.0"),
    (None, {}, {"steps": 0}, None, "{folder}/md.json: MD setting steps=0 must be >= 1"),
    (None, {}, {"timestep": -0.5}, None, "{folder}/md.json: MD setting timestep=-0.5 must be > 0.0"),
    (None, {}, {"steps": "many"}, None, "{folder}/md.json: MD setting steps: 'many' is not an integer"),
    (None, {}, {"bias_strength": -1.0}, None, "{folder}/md.json: MD setting bias_strength=-1.0 must be >= 0.0"),
    (None, {}, {"bias_width": 0.0}, None, "{folder}/md.json: MD setting bias_width=0.0 must be > 0.0"),
])
def test_tace_md_refuses_bad_starts_ensembles_and_settings(tmp_path, capsys, start, second, settings, damage, message):
    atoms = periodic_cell(seed=2)
    folder = md_folder(tmp_path, start(atoms) if start else atoms, {"m0.pt": small_model(), "m1.pt": small_model(1, **second)},
                       **settings)
    if damage:
        damage(folder / "m1.pt")
    assert md.main(folder) == 2
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1 and re.match("tace-md: " + message.format(folder=folder), lines[0]), lines
    assert (folder / md.TRAJECTORY).read_bytes() == b"an earlier trajectory"
    assert not (folder / md.RESULT).exists()


def test_md_stops_where_the_trainer_would_refuse_the_frame():
    atoms = Atoms("H2", positions=[[0.0, 0.0, 0.0], [0.0, 0.0, 0.2]])
    atoms.calc = SinglePointCalculator(atoms, energy=0.0)
    recorder = md.FrameRecorder(atoms, md.MDSettings(min_distance=0.0))
    recorder.record(0)
    assert recorder.stop_reason == "unphysical" and not recorder.frames["steps"]


def label_folder(folder: Path, settings: dict, structures: list[Atoms] | str) -> Path:
    (folder / runner.SETTINGS).write_text(json.dumps(settings))
    if isinstance(structures, str):
        (folder / runner.STRUCTURES).write_text(structures)
    else:
        write(folder / runner.STRUCTURES, structures, format="extxyz")
    return folder


@pytest.mark.parametrize("path,message", [
    ("ase.calculators.emtx.EMT", "cannot import the ASE calculator 'ase.calculators.emtx.EMT': "
                                 "module 'ase.calculators.emtx' was not found"),
    ("nopackage.Calc", "cannot import the ASE calculator 'nopackage.Calc': module 'nopackage' was not found"),
    ("ase.calculators.emt.EMTX", "cannot import the ASE calculator 'ase.calculators.emt.EMTX': "
                                 "module 'ase.calculators.emt' has no 'EMTX'"),
    ("needs_absent.Calc", "cannot import the ASE calculator 'needs_absent.Calc': module 'needs_absent' needs "
                          "module 'absent_dependency', which was not found"),
    ("broken_module.Calc", "cannot import the ASE calculator 'broken_module.Calc': importing module 'broken_module' "
                           "failed: ZeroDivisionError: division by zero"),
    ("EMT", "the ASE calculator 'EMT' is no import path such as 'ase.calculators.emt.EMT'"),
])
def test_labeller_import_path_names_the_part_that_failed(tmp_path, monkeypatch, path, message):
    (tmp_path / "needs_absent.py").write_text("import absent_dependency\n")
    (tmp_path / "broken_module.py").write_text("1 / 0\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(ValueError) as error:
        runner.calculator_class(path)
    assert str(error.value) == message


@pytest.mark.parametrize("settings,structures,message", [
    ({"calculator": "ase.calculators.emt.EMT"}, "", "structures.extxyz holds no structures"),
    ({"calculator": "ase.calculators.emt.EMT"}, "2\nProperties=species:S:1:pos:R:3\nCu 0 0 0\nCu 2 x 0\n",
     "structures.extxyz: cannot read frame 0 \\(from line 1\\): ValueError: could not convert string to float: 'x'"),
    ({"calculator": "ase.calculators.emt.EMT", "properties": ["energy", "charges"]}, None,
     "label.json setting properties=\\['energy', 'charges'\\] must be a non-empty list of \\('energy', 'forces', 'stress', 'dipole', 'polarizability', 'born_effective_charges'\\)"),
    ({"calculator": "ase.calculators.emt.EMT", "parameters": [1]}, None, "label.json setting parameters: \\[1\\] is not a mapping"),
    ({"calculator": "ase.calculators.emt.EMT", "params": {}}, None, "label.json must map 'calculator'"),
    ({"calculator": "nopackage.Calc"}, None, "module 'nopackage' was not found"),
])
def test_tace_label_refuses_bad_settings_and_files_before_labelling(tmp_path, monkeypatch, capsys, settings, structures, message):
    label_folder(tmp_path, settings, [bulk("Cu")] if structures is None else structures)
    monkeypatch.chdir(tmp_path)
    assert runner.main() == 2
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1 and re.search(message, lines[0]), lines
    assert not (tmp_path / runner.LABELLED).exists() and not (tmp_path / runner.REPORT).exists()


def test_labeller_reports_an_overlapping_structure_as_failed_and_labels_the_rest(tmp_path):
    overlapping = bulk("Cu", cubic=True)
    overlapping.positions[1] = overlapping.positions[0] + [0.05, 0.0, 0.0]
    label_folder(tmp_path, {"calculator": "ase.calculators.emt.EMT"}, [bulk("Cu"), overlapping])
    report = runner.label_all(tmp_path)
    assert [entry["status"] for entry in report] == ["ok", "failed"]
    assert "atoms 0 (Cu) and 1 (Cu) are 0.05 Å apart" in report[1]["error"]


class WritesMarker:
    """Unpickling this runs ``touch <marker>``: what a malicious checkpoint would do."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize("save,unsafe_load", [
    (pickle.dump, pickle.load), (torch.save, lambda handle: torch.load(handle, weights_only=False)),
], ids=["pickle", "torch.save"])
def test_a_checkpoint_whose_pickle_runs_code_is_refused_without_running_it(tmp_path, save, unsafe_load):
    marker = tmp_path / "code-ran"
    path = tmp_path / "malicious.pt"
    with open(path, "wb") as handle:
        save({"format": "tace-aiida-potential", "format_version": 1, "payload": WritesMarker(marker)}, handle)
    with pytest.raises(CheckpointError, match="malicious.pt is not a readable tace-aiida checkpoint"):
        read_checkpoint(path)
    assert not marker.exists()
    with open(path, "rb") as handle:
        unsafe_load(handle)
    assert marker.exists(), "the payload is live: an unsafe loader would have run it"


def test_a_restart_file_whose_pickle_runs_code_is_refused_without_running_it(tmp_path):
    marker = tmp_path / "code-ran"
    path = tmp_path / "restart.pt"
    torch.save({"format": "tace-aiida-training-restart", "format_version": 1, "epoch": WritesMarker(marker)}, path)
    with pytest.raises(RestartError, match="restart.pt is not a readable training restart file"):
        load_restart(path, {})
    with pytest.raises(RestartError, match="restart.pt is not a readable training restart file"):
        restart_epoch(path)
    assert not marker.exists()


def test_a_dask_job_state_file_is_read_as_plain_data(tmp_path):
    marker = tmp_path / "code-ran"
    code = f"__import__('os').system('touch {marker}')"
    crafted = json.dumps({"job_id": code, "status": "done", "gpus": 0, "reason": code})
    assert DaskJobState.from_json(crafted).reason == code
    with pytest.raises(ValueError, match="invalid dask job state"):
        DaskJobState.from_json(pickle.dumps(WritesMarker(marker)).decode("latin-1"))
    with pytest.raises(ValueError, match="invalid dask job state"):
        DaskJobState.from_json(json.dumps({"job_id": "1", "status": code, "gpus": 0}))
    assert not marker.exists()


def test_extxyz_fields_that_look_like_code_load_as_plain_data(tmp_path):
    marker = tmp_path / "code-ran"
    code = f"__import__('os').system('touch {marker}')"
    path = tmp_path / "train.xyz"
    path.write_text(
        f'2\nProperties=species:S:1:pos:R:3:note:S:1 energy=-1.0 comment="{code}" '
        f'meta="_JSON {{\\"x\\": \\"{code}\\"}}" pbc="F F F"\n'
        f"H 0 0 0 {code.replace(' ', '')}\nH 0.74 0 0 plain\n"
    )
    (atoms,) = read_structures(path)
    assert atoms.info["comment"] == code
    assert atoms.info["meta"] == {"x": code}
    assert atoms.arrays["note"][0] == code.replace(" ", "")
    path.write_text(f'2\nProperties=species:S:1:pos:R:3 energy="{code}" pbc="F F F"\nH 0 0 0\nH 0.74 0 0\n')
    with pytest.raises(ValueError, match="train.xyz, frame 0 \\(H2\\): its 'energy' label is not numeric: \"__import__"):
        frames_to_graphs(read_structures(path), str(path), [1], 3.0, LabelKeys())
    assert not marker.exists()


def test_yaml_settings_cannot_construct_python_objects(tmp_path):
    marker = tmp_path / "code-ran"
    path = tmp_path / "train.yaml"
    path.write_text(f"train_file: t.xyz\nlr: !!python/object/apply:os.system ['touch {marker}']\n")
    with pytest.raises(ValueError, match="cannot read training settings from .*train.yaml: could not determine a constructor"):
        TrainingConfig.from_yaml(path)
    assert not marker.exists()


def test_truncated_checkpoints_are_named_by_tace_eval_and_tace_train(tmp_path, capsys, checkpoint, frames_300K):
    truncate(Path(checkpoint))
    data = tmp_path / "data.xyz"
    write(data, labelled_copies(frames_300K, 3), format="extxyz")
    with pytest.raises(SystemExit) as exit_info:
        eval_main(["--checkpoint", checkpoint, "--data", str(data)])
    assert exit_info.value.code == 1
    assert re.fullmatch(f"tace-eval: {checkpoint} is not a readable tace-aiida checkpoint .*\n", capsys.readouterr().err)
    config = tmp_path / "train.yaml"
    config.write_text(f"train_file: {data}\ninit_checkpoint: {checkpoint}\noutput_dir: out\n")
    with pytest.raises(SystemExit) as exit_info:
        train_main([str(config)])
    assert exit_info.value.code == 1
    assert re.fullmatch(f"tace-train: {checkpoint} is not a readable tace-aiida checkpoint .*\n", capsys.readouterr().err)
    assert not (tmp_path / "out").exists()


def test_tace_md_refuses_an_empty_start_file(tmp_path, capsys):
    folder = md_folder(tmp_path, periodic_cell(), {"m0.pt": small_model()})
    (folder / md.STRUCTURE).write_text("")
    assert md.main(folder) == 2
    assert capsys.readouterr().err == f"tace-md: {folder}/structure.extxyz holds no structures\n"


def test_tace_train_reports_a_file_it_cannot_write_as_an_io_error(tmp_path, capsys, frames_300K):
    """An OSError is not a refusal of the settings: the ``tace.train`` parser makes it a retriable exit code (430)."""
    data = tmp_path / "data.xyz"
    write(data, labelled_copies(frames_300K, 3), format="extxyz")
    (tmp_path / "blocker").write_text("a file where the output folder's parent should be")
    config = tmp_path / "train.yaml"
    config.write_text(f"train_file: {data}\nmax_epochs: 1\noutput_dir: {tmp_path}/blocker/out\n")
    with pytest.raises(SystemExit) as exit_info:
        train_main([str(config)])
    assert exit_info.value.code == 1
    last_line = json.loads(capsys.readouterr().out.splitlines()[-1])
    assert last_line["error"] == "io_error" and "blocker" in last_line["message"]
