"""``tace-aiida generate``: parents and transformations from files, the choice of labeller by the code, its options
and their errors; labelling with EMT and with pw.x (slow)."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
from ase.build import bulk, molecule
from ase.io import write
from click.testing import CliRunner

from tace_aiida.generation.cli import build, generate, read_parents, read_transformation_file

from .conftest import FAMILY, PW_OPTIONS

CU = bulk("Cu", "fcc", a=3.61, cubic=True)
SUPERCELL = {"type": "supercell", "matrix": [2, 2, 2]}
STRAIN = "- {type: strain, volumetric: [-0.01, 0.01]}\n"


def test_parents_from_cif_poscar_and_multi_frame_extxyz(tmp_path):
    write(tmp_path / "Cu.cif", CU)
    write(tmp_path / "POSCAR", bulk("Ni", "fcc", a=3.52, cubic=True), format="vasp")
    write(tmp_path / "two.extxyz", [CU, bulk("Ni", "fcc", a=3.52)])
    parents = read_parents([tmp_path / "Cu.cif", tmp_path / "POSCAR", tmp_path / "two.extxyz"])
    assert sorted(parents) == ["Cu", "POSCAR", "two_0", "two_1"]
    assert parents["POSCAR"].get_ase().get_chemical_formula() == "Ni4"
    assert np.allclose(parents["Cu"].get_ase().cell.lengths(), 3.61)


def test_transformations_from_yaml_and_json_and_errors_name_the_file_and_value(tmp_path):
    (tmp_path / "chain.yaml").write_text("- {type: supercell, matrix: [2, 2, 2]}\n- {type: rattle, amplitudes: [0.05]}\n")
    (tmp_path / "chain.json").write_text(json.dumps({"transformations": [SUPERCELL]}))
    assert read_transformation_file(tmp_path / "chain.yaml")[1] == {"type": "rattle", "amplitudes": [0.05]}
    assert read_transformation_file(tmp_path / "chain.json") == [SUPERCELL]
    (tmp_path / "bad.yaml").write_text("- {type: strain, volumetric: 2%}\n")
    with pytest.raises(ValueError, match=r"bad.yaml: transformation 1: strain: volumetric must be .* not '2%'"):
        read_transformation_file(tmp_path / "bad.yaml")


@pytest.mark.slow
def test_the_generate_command_labels_with_emt_and_prints_the_summary(aiida_profile, installed_code, tmp_path):
    write(tmp_path / "Cu.cif", CU)
    (tmp_path / "chain.yaml").write_text("- {type: supercell, matrix: [2, 1, 1]}\n"
                                         "- {type: rattle, amplitudes: [0.05], copies: 3, keep_parents: true}\n")
    code = installed_code("tace-label")
    result = CliRunner().invoke(generate, [str(tmp_path / "Cu.cif"), "-t", str(tmp_path / "chain.yaml"),
                                           "--code", code.full_label, "--structures-per-job", "2"])
    assert result.exit_code == 0, result.output
    assert "made 4 variants, kept 4" in result.output
    assert ("1 of them have every atom where symmetry forbids a force: their labels hold no forces (add a rattle step "
            "to learn forces)") in result.output, "the 2x1x1 supercell kept as the rattle's parent"
    reused, labelled = map(int, re.search(r"reused (\d+), labelled (\d+), failed 0", result.output).groups())
    assert reused + labelled == 4, "labels of the ideal parent made by an earlier test of the session are reused"
    assert "dataset: TrainingSetData<" in result.output


@pytest.fixture
def files(tmp_path):
    """A Si cell, a water molecule and a chain of strains, as files."""
    write(tmp_path / "Si.cif", bulk("Si", "diamond", a=5.43))
    write(tmp_path / "water.xyz", molecule("H2O"))
    (tmp_path / "strain.yaml").write_text(STRAIN)
    return tmp_path


@pytest.fixture
def pw_code(aiida_profile, aiida_code_installed):
    return aiida_code_installed(label="pw-cli", default_calc_job_plugin="quantumespresso.pw")


def invoke(files, *options: str, parent: str = "Si.cif"):
    """``generate`` on one parent file with the strains; the CliRunner result."""
    return CliRunner().invoke(generate, [str(files / parent), "-t", str(files / "strain.yaml"), *options])


def parents(files, name: str = "Si.cif") -> dict:
    return read_parents([files / name])


def test_a_pw_code_fills_label_qe_with_the_protocol_overrides_and_options(files, pw_code):
    builder = build(parents(files), [{"type": "strain", "volumetric": [0.01]}], code=pw_code.full_label,
                    protocol="fast", overrides={"kpoints_distance": 0.8}, options={"withmpi": False},
                    max_concurrent=3)
    assert "code" not in builder.label_ase
    assert builder.label_qe.code.uuid == pw_code.uuid
    assert builder.label_qe.protocol.value == "fast" and builder.label_qe.max_concurrent.value == 3
    assert builder.label_qe.overrides.get_dict() == {"kpoints_distance": 0.8}
    assert builder.label_qe.options.get_dict() == {"withmpi": False}


def test_a_tace_label_code_fills_label_ase_with_emt_by_default(files, installed_code):
    code = installed_code("tace-label")
    builder = build(parents(files), [{"type": "strain", "volumetric": [0.01]}], code=code.full_label,
                    structures_per_job=4)
    assert "code" not in builder.label_qe
    assert builder.label_ase.calculator.value == "ase.calculators.emt.EMT"
    assert builder.label_ase.structures_per_job.value == 4 and "max_concurrent" not in builder.label_ase


@pytest.mark.parametrize("options, message", [
    (["--code", "no-such-code@nowhere"], r"unknown code 'no-such-code@nowhere'"),
    (["--pseudo-family", "no/such-family"], r"no pseudopotential family 'no/such-family' is installed"),
    (["--calculator", "ase.calculators.emt.EMT"], r"code 'pw-cli@localhost' is pw.x .* 'ase.calculators.emt.EMT'"),
    (["--parameters", '{"asap_cutoff": true}'], r"--parameters: only for label_ase; code 'pw-cli@localhost' labels "
                                                r"with label_qe"),
    (["--structures-per-job", "3"], r"--structures-per-job: only for label_ase"),
    (["--options", "withmpi"], r"--options: not JSON: 'withmpi'"),
    (["--options", "[1]"], r"--options must be a JSON object"),
    (["--protocol", "quick"], r"'quick' is not one of 'fast', 'balanced', 'stringent'"),
])
def test_bad_pw_options_are_refused_naming_the_value(files, pw_code, options, message):
    defaults = {"--code": pw_code.full_label}
    given = dict(zip(options[::2], options[1::2], strict=True))
    result = invoke(files, *[item for pair in {**defaults, **given}.items() for item in pair])
    assert result.exit_code != 0
    assert re.search(message, result.output), result.output


def test_a_code_of_another_plugin_is_refused(files, aiida_profile, aiida_code_installed):
    code = aiida_code_installed(label="ph-cli", default_calc_job_plugin="quantumespresso.ph")
    result = invoke(files, "--code", code.full_label)
    assert result.exit_code != 0
    assert "code 'ph-cli@localhost' is for the plugin 'quantumespresso.ph'" in result.output, result.output


def test_pw_options_with_a_tace_label_code_are_refused(files, installed_code):
    result = invoke(files, "--code", installed_code("tace-label").full_label, "--protocol", "fast")
    assert result.exit_code != 0
    assert "--protocol: only for label_qe; code 'tace-label@localhost' labels with label_ase" in result.output


def test_pw_x_refuses_molecules_naming_them(files, pw_code):
    (files / "strain.yaml").write_text("- {type: box, vacuum: 4.0}\n")
    result = invoke(files, "--code", pw_code.full_label, parent="water.xyz")
    assert result.exit_code != 0
    assert "`label_qe` labels periodic cells only: structures ['water']" in result.output, result.output


def test_an_overrides_file_that_does_not_parse_is_named(files, pw_code):
    (files / "overrides.yaml").write_text("pw: {parameters: [\n")
    result = invoke(files, "--code", pw_code.full_label, "--overrides", str(files / "overrides.yaml"))
    assert result.exit_code != 0
    assert "cannot parse" in result.output and "overrides.yaml" in result.output, result.output


@pytest.mark.slow
def test_two_strained_silicon_cells_labelled_by_pw_x(files, fast_polling, qe):
    from aiida import orm

    _, code = qe
    (files / "overrides.yaml").write_text("kpoints_distance: 0.8\n")
    result = invoke(files, "--code", code.full_label, "--pseudo-family", FAMILY, "--protocol", "fast",
                    "--overrides", str(files / "overrides.yaml"), "--options", json.dumps(PW_OPTIONS))
    assert result.exit_code == 0, result.output
    assert "made 2 variants, kept 2" in result.output
    assert "reused 0, labelled 2, failed 0" in result.output
    dataset = orm.load_node(int(re.search(r"TrainingSetData<(\d+)>", result.output).group(1)))
    assert dataset.label_counts == {"energy": 2, "forces": 2, "stress": 2}
    frames = dataset.get_atoms()
    pressures = sorted(-atoms.get_stress()[:3].mean() for atoms in frames)
    assert pressures[0] < pressures[1], "the compressed cell is under the higher pressure"
    assert all(atoms.get_potential_energy() < 0 for atoms in frames)
    creators = {orm.load_node(atoms.info["label_uuid"]).process_label for atoms in frames}
    assert creators == {"CrashSafePwBaseWorkChain"}
