"""Exploration MD driven by the first member (``driven_by: first_member``): the path is that member's,
the saved frames are the ensemble's, and the ensemble is evaluated only at the saved frames."""

from __future__ import annotations

import json

import numpy as np
import pytest
from ase import Atoms
from ase.io import write
from tace_aiida.model import md
from tace_aiida.model.calculator import TACECalculator

from .conftest import periodic_cell

MOLECULE = Atoms("CCONH", positions=[[0, 0, 0], [1.45, 0.1, 0], [2.2, 1.1, 0.2], [-0.7, 1.2, 0.1], [-0.5, -0.9, 0.3]])


def counting(calculator: TACECalculator) -> list[int]:
    """Count ``calculator``'s evaluations: the returned list grows by one per call of ``calculate``."""
    calls: list[int] = []
    evaluate = calculator.calculate

    def counted(*args, **kwargs):
        calls.append(1)
        return evaluate(*args, **kwargs)

    calculator.calculate = counted
    return calls


def test_the_first_member_drives_and_the_ensemble_records_the_saved_frames(ensemble_checkpoints):
    settings = md.MDSettings(checkpoints=ensemble_checkpoints, temperature=300.0, steps=9, save_interval=3,
                             device="cpu", driven_by="first_member")
    ensemble, driver = TACECalculator(ensemble_checkpoints, device="cpu"), TACECalculator(ensemble_checkpoints[:1], device="cpu")
    ensemble_calls, driver_calls = counting(ensemble), counting(driver)
    driven, summary = md.run_md(MOLECULE, settings, ensemble, driver)
    assert summary["stop_reason"] == "completed" and summary["frames"] == 4
    assert len(ensemble_calls) == 4, "the ensemble is evaluated at the 4 saved frames (steps 0, 3, 6, 9) only"
    assert len(driver_calls) == 10, "the first member at the start and after each of the 9 steps"

    alone = md.MDSettings(checkpoints=ensemble_checkpoints[:1], temperature=300.0, steps=9, save_interval=3, device="cpu")
    member_path, _ = md.run_md(MOLECULE, alone, TACECalculator(ensemble_checkpoints[:1], device="cpu"))
    assert np.abs(driven["positions"] - member_path["positions"]).max() < 1e-12, "the path is the first member's"

    reference = TACECalculator(ensemble_checkpoints, device="cpu")
    assert driven["max_force_std"].min() > 1e-3, "frames carry the members' spread, not one member's zero"
    for index, positions in enumerate(driven["positions"]):
        atoms = MOLECULE.copy()
        atoms.positions = positions
        atoms.calc = reference
        assert driven["energies"][index] == pytest.approx(atoms.get_potential_energy(), abs=1e-10)
        assert np.abs(driven["forces"][index] - atoms.get_forces()).max() < 1e-10
        assert driven["max_force_std"][index] == pytest.approx(reference.results["max_force_std"], abs=1e-10)


def test_tace_md_reads_driven_by_from_its_settings(ensemble_checkpoints, tmp_path):
    write(tmp_path / md.STRUCTURE, MOLECULE, format="extxyz")
    settings = {"checkpoints": ensemble_checkpoints, "temperature": 300.0, "steps": 4, "save_interval": 2,
                "device": "cpu", "seed": 5}
    paths = {}
    for driven_by in ("mean", "first_member"):
        (tmp_path / md.SETTINGS).write_text(json.dumps({**settings, "driven_by": driven_by}))
        assert md.main(tmp_path) == 0
        paths[driven_by] = np.load(tmp_path / md.TRAJECTORY)["positions"]
    assert np.allclose(paths["mean"][0], paths["first_member"][0])
    assert np.abs(paths["mean"][-1] - paths["first_member"][-1]).max() > 1e-8, "other forces, another path"


def test_driven_by_is_checked_and_refused_with_the_bias():
    with pytest.raises(ValueError, match="driven_by must be one of mean, first_member, not 'last'"):
        md.MDSettings(driven_by="last")
    with pytest.raises(ValueError, match=r"first_member cannot run the uncertainty bias \(bias_strength 1.0 eV\)"):
        md.MDSettings(driven_by="first_member", bias_strength=1.0)


def test_npt_driven_by_the_first_member_follows_its_stress(ensemble_checkpoints):
    """Under a barostat the cell moves with the first member's stress, as in a run of that member alone."""
    cell = periodic_cell(seed=3)
    common = dict(ensemble="npt", temperature=300.0, pressure=0.5, barostat_time=50.0, timestep=0.5, steps=6,
                  save_interval=3, device="cpu")
    settings = md.MDSettings(checkpoints=ensemble_checkpoints, driven_by="first_member", **common)
    driven, _ = md.run_md(cell, settings, TACECalculator(ensemble_checkpoints, device="cpu"),
                          TACECalculator(ensemble_checkpoints[:1], device="cpu"))
    alone = md.MDSettings(checkpoints=ensemble_checkpoints[:1], **common)
    member_path, _ = md.run_md(cell, alone, TACECalculator(ensemble_checkpoints[:1], device="cpu"))
    assert np.abs(driven["cells"][-1] - driven["cells"][0]).max() > 1e-8, "the barostat moved the cell"
    assert np.abs(driven["cells"] - member_path["cells"]).max() < 1e-12
    assert np.abs(driven["positions"] - member_path["positions"]).max() < 1e-12
    assert driven["max_force_std"].min() > 1e-3


def run_tace_md(folder, checkpoints: list[str], **settings) -> tuple[dict, np.ndarray]:
    """``tace-md`` in ``folder`` on the test molecule: its result summary and trajectory positions [F, N, 3] (Å)."""
    write(folder / md.STRUCTURE, MOLECULE, format="extxyz")
    common = {"checkpoints": checkpoints, "temperature": 300.0, "steps": 6, "save_interval": 3, "device": "cpu",
              "seed": 5, "driven_by": "first_member"}
    (folder / md.SETTINGS).write_text(json.dumps({**common, **settings}))
    assert md.main(folder) == 0
    return json.loads((folder / md.RESULT).read_text()), np.load(folder / md.TRAJECTORY)["positions"]


def test_a_driver_that_fails_to_compile_leaves_the_checkpoint_driving(ensemble_checkpoints, tmp_path, monkeypatch,
                                                                      capsys):
    def no_compiler(model, path, compiled=False):
        raise RuntimeError("no C++ compiler here")

    (tmp_path / "plain").mkdir()
    plain, plain_path = run_tace_md(tmp_path / "plain", ensemble_checkpoints)
    monkeypatch.setattr(md, "export_program", no_compiler)
    result, path = run_tace_md(tmp_path, ensemble_checkpoints, compile_driver=True)
    assert "compiling the first member failed, its checkpoint drives instead: RuntimeError: no C++ compiler here" in (
        capsys.readouterr().err)
    assert result["driver"] == plain["driver"] == "first member"
    assert np.abs(path - plain_path).max() < 1e-12


@pytest.mark.slow
def test_a_compiled_driver_follows_the_first_members_path(ensemble_checkpoints, tmp_path):
    """``compile_driver``: the first member compiled by AOTInductor drives; in float64 its path is the checkpoint's."""
    (tmp_path / "plain").mkdir()
    _, plain_path = run_tace_md(tmp_path / "plain", ensemble_checkpoints)
    result, path = run_tace_md(tmp_path, ensemble_checkpoints, compile_driver=True)
    assert result["driver"] == "compiled first member" and result["stop_reason"] == "completed"
    assert (tmp_path / md.DRIVER_PROGRAM).is_file()
    assert np.abs(path - plain_path).max() < 1e-10
    assert np.abs(path[-1] - path[0]).max() > 1e-3, "the atoms moved"
