"""The CalcJobs run for real on localhost (EMT labelling, a two-epoch training, a short MD), and
their parsers' exit codes on broken outputs."""

from __future__ import annotations

import io
import json
import subprocess
import sys

import numpy as np
import pytest
from aiida import orm
from aiida.engine import run_get_node
from ase.build import bulk
from ase.calculators.emt import EMT

from tace_aiida.abandoned import stops_its_own_job
from tace_aiida.calculations.label_ase import AseLabelCalculation
from tace_aiida.calculations.md import MDCalculation
from tace_aiida.calculations.train import TrainCalculation
from tace_aiida.data import PotentialData, TrainingSetData

from .conftest import DATA


def rattled_copper(n: int, seed: int = 0) -> list:
    rng = np.random.default_rng(seed)
    frames = []
    for i in range(n):
        atoms = bulk("Cu", "fcc", a=3.6, cubic=True) * (2, 1, 1)
        atoms.rattle(0.05 + 0.02 * i, seed=int(rng.integers(1000)))
        frames.append(atoms)
    return frames


def label(code, structures: TrainingSetData, calculator: str = "ase.calculators.emt.EMT", **extra):
    return run_get_node(
        AseLabelCalculation, code=code, structures=structures, calculator=orm.Str(calculator), **extra
    )


@pytest.mark.slow
def test_emt_labelling_matches_emt(aiida_profile, installed_code):
    frames = rattled_copper(3)
    results, node = label(installed_code("tace-label"), TrainingSetData(frames))
    assert node.is_finished_ok, node.exit_message
    labelled = results["dataset"].get_atoms()
    assert results["report"]["num_labelled"] == 3 and results["report"]["num_failed"] == 0
    for original, atoms in zip(frames, labelled, strict=True):
        assert np.allclose(atoms.positions, original.positions, atol=1e-7)
        reference = atoms.copy()
        reference.calc = EMT()
        assert atoms.get_potential_energy() == pytest.approx(reference.get_potential_energy(), abs=1e-10)
        assert np.allclose(atoms.get_forces(), reference.get_forces(), atol=1e-10)
        assert np.allclose(atoms.get_stress(), reference.get_stress(), atol=1e-10)
        assert atoms.info["label_uuid"] == node.uuid
    assert results["dataset"].label_counts == {"energy": 3, "forces": 3, "stress": 3}


@pytest.mark.slow
def test_failed_structures_are_reported_not_labelled(aiida_profile, installed_code):
    frames = rattled_copper(2) + [bulk("Si", "diamond", a=5.43)]
    results, node = label(installed_code("tace-label"), TrainingSetData(frames))
    assert node.is_finished_ok
    assert results["report"]["num_failed"] == 1
    assert results["report"]["failures"][0]["index"] == 2
    assert "Si" in results["report"]["failures"][0]["error"] or "NotImplemented" in results["report"]["failures"][0]["error"]
    assert [a.info["input_index"] for a in results["dataset"].get_atoms()] == [0, 1]

    results, node = label(installed_code("tace-label"), TrainingSetData([bulk("Si", "diamond", a=5.43)]))
    assert node.exit_status == AseLabelCalculation.exit_codes.ERROR_ALL_STRUCTURES_FAILED.status
    assert "dataset" not in results and results["report"]["num_failed"] == 1
    assert node.exit_message.startswith("No structure could be labelled: structure 0: NotImplementedError: ")


@pytest.mark.slow
def test_unknown_calculator_is_an_exit_code(aiida_profile, installed_code):
    _, node = label(installed_code("tace-label"), TrainingSetData(rattled_copper(1)), calculator="ase.calculators.nothing.Nope")
    assert node.exit_status == AseLabelCalculation.exit_codes.ERROR_INVALID_SETTINGS.status
    assert "ase.calculators.nothing.Nope" in node.exit_message


def test_label_parser_without_report_fails(aiida_profile, parse_retrieved):
    results, call = parse_retrieved("tace.label_ase", {"tace-label.err": b"Killed\n"})
    assert call.exit_status == AseLabelCalculation.exit_codes.ERROR_OUTPUT_MISSING.status
    _, call = parse_retrieved("tace.label_ase", {"label_report.json": b'[{"index": 0, "sta', "labelled.extxyz": b""})
    assert call.exit_status == AseLabelCalculation.exit_codes.ERROR_OUTPUT_CORRUPT.status


TRAINING = {"model": {"channels": 8, "radial_mlp": [16, 16]}, "max_epochs": 2, "batch_size": 4, "dtype": "float32",
            "e0s_file": None, "valid_fraction": 0.25}


@pytest.fixture(scope="module")
def bpa_dataset():
    from ase.io import read

    return read(DATA / "3bpa_300K_40.xyz", ":12")


@pytest.mark.slow
def test_training_produces_a_potential_with_provenance(aiida_profile, installed_code, bpa_dataset):
    dataset = TrainingSetData(bpa_dataset).store()
    results, node = run_get_node(
        TrainCalculation, code=installed_code("tace-train"), dataset=dataset,
        parameters=orm.Dict(TRAINING), seed=orm.Int(3),
    )
    assert node.is_finished_ok, node.exit_message
    potential = results["potential"]
    assert potential.elements == ["H", "C", "N", "O"]
    assert potential.base.attributes.get("model_config")["channels"] == 8
    assert results["metrics"]["epochs_run"] == 2 and len(results["metrics"]["epochs"]) == 2
    assert "model with" in results["log"].get_content()
    assert potential.creator.uuid == node.uuid
    assert node.base.links.get_incoming().get_node_by_label("dataset").uuid == dataset.uuid

    tuned, tuned_node = run_get_node(
        TrainCalculation, code=installed_code("tace-train"), dataset=dataset,
        parameters=orm.Dict({**TRAINING, "max_epochs": 1}), parent_potential=potential,
    )
    assert tuned_node.is_finished_ok
    assert tuned["metrics"]["epochs_run"] == 1


@pytest.mark.slow
def test_nan_loss_is_an_exit_code(aiida_profile, installed_code, bpa_dataset):
    _, node = run_get_node(
        TrainCalculation, code=installed_code("tace-train"), dataset=TrainingSetData(bpa_dataset[:4]),
        parameters=orm.Dict({**TRAINING, "lr": 1e12, "max_epochs": 3}),
    )
    assert node.exit_status == TrainCalculation.exit_codes.ERROR_NAN_LOSS.status


def test_training_parameters_are_validated(aiida_profile, installed_code):
    with pytest.raises(ValueError, match="must not set \\['train_file'\\]"):
        TrainCalculation(inputs={"code": installed_code("tace-train"), "dataset": TrainingSetData([bulk("Cu")]),
                                 "parameters": orm.Dict({"train_file": "x"})})
    with pytest.raises(ValueError, match="unknown training settings \\['epochs'\\]"):
        TrainCalculation(inputs={"code": installed_code("tace-train"), "dataset": TrainingSetData([bulk("Cu")]),
                                 "parameters": orm.Dict({"epochs": 3})})


def test_train_parser_exit_codes(aiida_profile, parse_retrieved):
    _, call = parse_retrieved("tace.train", {"tace-train.log": b"2026 INFO model with 10 parameters\n"})
    assert call.exit_status == TrainCalculation.exit_codes.ERROR_OUTPUT_MISSING.status == 300
    assert "model.pt was not written" in call.exit_message
    error = {"error": "invalid_input", "message": "cannot read structures from train.extxyz"}
    _, call = parse_retrieved("tace.train", {"tace-train.out": json.dumps(error).encode()})
    assert call.exit_status == TrainCalculation.exit_codes.ERROR_INVALID_SETTINGS.status == 302
    assert "cannot read structures from train.extxyz" in call.exit_message
    disk = {"error": "io_error", "message": "[Errno 28] No space left on device: 'model.pt'"}
    _, call = parse_retrieved("tace.train", {"tace-train.out": json.dumps(disk).encode()})
    assert call.exit_status == TrainCalculation.exit_codes.ERROR_READ_WRITE.status == 430, "4xx: a restart can succeed"
    assert "No space left on device" in call.exit_message
    nan = {"error": "nan_loss", "message": "loss became nan in epoch 2; lower the learning rate"}
    _, call = parse_retrieved("tace.train", {"tace-train.out": b"starting\n" + json.dumps(nan).encode() + b"\n"})
    assert call.exit_status == TrainCalculation.exit_codes.ERROR_NAN_LOSS.status == 410, "4xx: a restart can succeed"
    _, call = parse_retrieved("tace.train", {"tace-train.out": b'{"epochs": 3, "trunc'})
    assert call.exit_status == TrainCalculation.exit_codes.ERROR_OUTPUT_CORRUPT.status == 303
    _, call = parse_retrieved("tace.train", {"model.pt": b"truncated", "metrics.jsonl": b"", "tace-train.log": b"ok\n"})
    assert call.exit_status == TrainCalculation.exit_codes.ERROR_INVALID_CHECKPOINT.status == 311


def test_a_training_at_its_wall_time_keeps_its_restart_file(aiida_profile, parse_retrieved, tmp_path):
    from tace_aiida.model.restart import save_restart

    restart = save_restart(tmp_path / "restart.pt", {"training": {}, "epoch": 6})
    files = {"tace-train.log": b"epoch 6\n"}
    outputs, call = parse_retrieved("tace.train", files, temporary={"restart.pt": restart.read_bytes()},
                                    scheduler_exit_status=120)
    assert call.exit_status == TrainCalculation.exit_codes.ERROR_OUT_OF_WALLTIME.status == 420, "4xx: it can continue"
    assert "after epoch 6" in call.exit_message
    assert outputs["restart"].get_content(mode="rb") == restart.read_bytes()
    outputs, call = parse_retrieved("tace.train", files, temporary={"restart.pt": b"\x80\x02trunc"},
                                    scheduler_exit_status=120)
    assert call.exit_status == 420 and "before its first epoch ended" in call.exit_message
    assert "restart" not in outputs, "a damaged restart file is not offered to the next job"
    from tace_aiida.schedulers import STATE_FILENAME, DaskJobState, Ending, JobStatus

    lost = DaskJobState("1", JobStatus.DONE, gpus=0, ending=Ending.LOST, reason="the worker died").to_json().encode()
    outputs, call = parse_retrieved("tace.train", {STATE_FILENAME: lost}, temporary={"restart.pt": restart.read_bytes()})
    assert call.exit_status == TrainCalculation.exit_codes.ERROR_JOB_LOST.status == 400
    assert "restart" in outputs, "a lost job continues from its last epoch too"


def test_truncated_md_arrays_are_named(aiida_profile, parse_retrieved):
    buffer = io.BytesIO()
    np.savez_compressed(buffer, positions=np.zeros((1, 2, 3)))
    _, call = parse_retrieved("tace.md", {"trajectory.npz": buffer.getvalue(), "md_result.json": b'{"stop_reason": "steps"}'})
    assert call.exit_status == MDCalculation.exit_codes.ERROR_OUTPUT_CORRUPT.status == 303
    assert "trajectory.npz lacks ['cells'" in call.exit_message


def test_an_exception_in_a_parser_is_an_exit_code_not_an_excepted_job(aiida_profile, parse_retrieved, monkeypatch):
    from tace_aiida.parsers.train import TrainParser

    def broken(self, **kwargs):
        raise KeyError("energy")

    monkeypatch.setattr(TrainParser, "parse_job", broken)
    _, call = parse_retrieved("tace.train", {"tace-train.log": b"ok\n"})
    assert call.exit_status == TrainCalculation.exit_codes.ERROR_UNEXPECTED_PARSER_EXCEPTION.status == 350
    assert "KeyError: 'energy'" in call.exit_message


@pytest.mark.slow
def test_md_with_an_ensemble_records_uncertainty(aiida_profile, installed_code, trained, tmp_path):
    import torch
    from tace_aiida.model.checkpoint import load_model, save_checkpoint

    model, metadata = load_model(trained["checkpoint"])
    with torch.no_grad():
        for parameter in model.readouts.parameters():
            parameter.add_(0.05)
    members = {"m0": PotentialData(trained["checkpoint"]), "m1": PotentialData(save_checkpoint(tmp_path / "m1.pt", model, metadata))}
    from ase.io import read

    structure = orm.StructureData(ase=read(DATA / "3bpa_300K_40.xyz", 0))
    parameters = {"ensemble": "nvt", "temperature": 300, "timestep": 0.5, "steps": 20, "save_interval": 5, "device": "cpu"}
    results, node = run_get_node(MDCalculation, code=installed_code("tace-md"), potentials=members,
                                 structure=structure, parameters=orm.Dict(parameters))
    assert node.is_finished_ok, node.exit_message
    trajectory = results["trajectory"]
    assert trajectory.numsteps == 5
    assert list(trajectory.get_stepids()) == [0, 5, 10, 15, 20]
    assert trajectory.get_array("forces").shape == (5, 27, 3)
    assert (trajectory.get_array("max_force_std") > 0).all()
    assert results["result"]["stop_reason"] == "completed"

    strict = {**parameters, "max_force_std": 1e-6}
    results, node = run_get_node(MDCalculation, code=installed_code("tace-md"), potentials=members,
                                 structure=structure, parameters=orm.Dict(strict))
    assert results["result"]["stop_reason"] == "uncertainty"
    assert results["trajectory"].numsteps == 1


def test_md_parameters_and_parser_exit_codes(aiida_profile, installed_code, parse_retrieved, tmp_path):
    from tace_aiida.model.checkpoint import save_checkpoint

    from .conftest import small_model

    potential = PotentialData(save_checkpoint(tmp_path / "small.pt", small_model()))
    inputs = {"code": installed_code("tace-md"), "structure": orm.StructureData(ase=bulk("Cu"))}
    with pytest.raises(ValueError, match="ensemble must be nve, nvt or npt"):
        MDCalculation(inputs={**inputs, "parameters": orm.Dict({"ensemble": "nph"}), "potentials": {"m0": potential}})
    with pytest.raises(ValueError, match="at least one potential is needed"):
        MDCalculation(inputs={**inputs, "parameters": orm.Dict({}), "potentials": {}})
    _, call = parse_retrieved("tace.md", {"tace-md.err": b"Segmentation fault\n"})
    assert call.exit_status == MDCalculation.exit_codes.ERROR_OUTPUT_MISSING.status
    _, call = parse_retrieved("tace.md", {"tace-md.err": b"tace-md: NPT needs a cell periodic in all three directions\n"})
    assert call.exit_status == MDCalculation.exit_codes.ERROR_INVALID_SETTINGS.status
    _, call = parse_retrieved("tace.md", {"trajectory.npz": b"PK\x03\x04truncated", "md_result.json": b"{}"})
    assert call.exit_status == MDCalculation.exit_codes.ERROR_OUTPUT_CORRUPT.status


def test_md_blow_up_is_an_exit_code_that_keeps_the_frames(aiida_profile, parse_retrieved):
    frames, atoms = 2, 3
    arrays = {
        "positions": np.zeros((frames, atoms, 3)), "cells": np.tile(np.eye(3) * 10, (frames, 1, 1)),
        "energies": np.zeros(frames), "forces": np.zeros((frames, atoms, 3)), "energy_std": np.zeros(frames),
        "forces_std": np.zeros((frames, atoms)), "max_force_std": np.zeros(frames), "descriptors": np.zeros((frames, 4)),
        "temperatures": np.full(frames, 300.0), "steps": np.array([0, 10]), "numbers": np.array([29, 29, 29]),
        "pbc": np.array([True, True, True]),
    }
    buffer = io.BytesIO()
    np.savez_compressed(buffer, **arrays)
    result = {"stop_reason": "unphysical", "steps_done": 13, "frames": 2}
    outputs, call = parse_retrieved("tace.md", {"trajectory.npz": buffer.getvalue(), "md_result.json": json.dumps(result).encode()})
    assert call.exit_status == MDCalculation.exit_codes.ERROR_UNPHYSICAL.status
    assert "after 13 steps" in call.exit_message
    assert outputs["trajectory"].numsteps == 2


@pytest.mark.slow
def test_potential_provenance_leads_to_every_labelling(aiida_profile, installed_code):
    from tace_aiida.calculations.functions import merge_datasets

    batches = [label(installed_code("tace-label"), TrainingSetData(rattled_copper(3, seed)))[0]["dataset"] for seed in (1, 2)]
    merged = merge_datasets(first=batches[0], second=batches[1])
    results, node = run_get_node(
        TrainCalculation, code=installed_code("tace-train"), dataset=merged,
        parameters=orm.Dict({**TRAINING, "valid_fraction": 0.0, "max_epochs": 1}),
    )
    assert node.is_finished_ok
    potential = results["potential"]

    builder = orm.QueryBuilder()
    builder.append(PotentialData, filters={"id": potential.pk}, tag="potential")
    builder.append(orm.CalcJobNode, with_outgoing="potential", tag="training")
    builder.append(TrainingSetData, with_outgoing="training", tag="dataset")
    builder.append(orm.CalcFunctionNode, with_outgoing="dataset", tag="merge")
    builder.append(TrainingSetData, with_outgoing="merge", tag="batch")
    builder.append(orm.CalcJobNode, with_outgoing="batch", project="uuid")
    labelling = {uuid for (uuid,) in builder.all()}
    assert len(labelling) == 2
    assert {atoms.info["label_uuid"] for atoms in merged.get_atoms()} == labelling
    for uuid in labelling:
        assert orm.load_node(uuid).process_type == "aiida.calculations:tace.label_ase"


def test_the_labeller_starts_without_importing_torch():
    """Every labelling job starts ``tace-label``; importing PyTorch there would add seconds to each job."""
    command = "import sys, tace_aiida.labelling.runner; print('torch' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", command], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "False", "tace_aiida.labelling.runner imports torch"


@pytest.mark.parametrize("scheduler, transport, plugin, stops", [
    ("tace.dask", "core.local", "tace.train", True),
    ("core.direct", "core.local", "tace.label_ase", False),
    ("tace.dask", "core.ssh", "tace.md", False),
    ("tace.dask", "core.local", "quantumespresso.pw", False),
])
def test_a_forced_kill_is_left_to_the_calcjob_only_where_it_stops_its_own_job(aiida_computer, scheduler, transport,
                                                                               plugin, stops):
    """Workchains kill the scheduler job of every other CalcJob child themselves (``tests/test_forced_kill.py``)."""
    node = orm.CalcJobNode(computer=aiida_computer(scheduler_type=scheduler, transport_type=transport))
    node.set_process_type(f"aiida.calculations:{plugin}")
    assert stops_its_own_job(node) is stops


def test_a_labelling_failure_is_described_by_its_first_structure():
    from tace_aiida.labelling.failures import describe_failures

    one = [{"index": 3, "error": "SCFError: not converged"}]
    assert describe_failures(one) == "structure 3: SCFError: not converged"
    three = one + [{"index": 5, "error": "x"}, {"index": 7, "error": "y"}]
    assert describe_failures(three, "the run's `report`") == (
        "structure 3: SCFError: not converged (and 2 more, in the run's `report`)")
    assert describe_failures([]) == "no structure failed"
