"""Generating training sets: each transformation, settings errors, seeding, deduplication; the workchain (slow)."""

from __future__ import annotations

import numpy as np
import pytest
from ase.build import bulk, molecule

from tace_aiida.generation import content_hash, deduplicate, generate, read_transformations
from tace_aiida.generation.dedup import EXACT, SYMMETRY

CU = bulk("Cu", "fcc", a=3.61, cubic=True)
SUPERCELL = {"type": "supercell", "matrix": [2, 2, 2]}


def run(transformations: list[dict], parents: dict | None = None, seed: int = 1, symmetry: bool = True):
    return generate(parents or {"cu": CU}, transformations, seed=seed, symmetry=symmetry)


# ------------------------------------------------------------------------------------- transformations


def test_supercell_multiplies_the_atoms():
    generated = run([SUPERCELL])
    assert [len(atoms) for atoms in generated.frames] == [32]
    assert np.allclose(generated.frames[0].cell.lengths(), 2 * 3.61)
    assert generated.frames[0].info["parent"] == "cu"


def test_strain_makes_one_cell_per_volumetric_value_and_three_per_shear_value():
    generated = run([{"type": "strain", "volumetric": [-0.02, 0.03], "shear": [0.01, 0.02]}], symmetry=False)
    assert len(generated.frames) == 2 + 3 * 2
    volumes = sorted(atoms.get_volume() for atoms in generated.frames)
    assert volumes[0] == pytest.approx(CU.get_volume() * 0.98**3, rel=1e-9)
    assert volumes[-1] == pytest.approx(CU.get_volume() * 1.03**3, rel=1e-9)
    # shear keeps (to first order) the volume and makes a non-orthogonal cell
    sheared = [atoms for atoms in generated.frames if not np.allclose(atoms.cell.angles(), 90)]
    assert len(sheared) == 6
    assert {round(np.linalg.det(atoms.cell) / CU.get_volume(), 3) for atoms in sheared} == {1.0}


def test_shears_of_a_cubic_cell_along_yz_xz_xy_are_symmetry_equivalent():
    generated = run([{"type": "strain", "shear": [0.01, 0.02]}])
    assert len(generated.frames) == 2 and generated.report["dropped"][SYMMETRY] == 4


def test_the_report_counts_variants_whose_forces_vanish_by_symmetry():
    strained = run([SUPERCELL, {"type": "strain", "volumetric": [-0.02, 0.02], "keep_parents": True}])
    assert strained.report["force_free"] == len(strained.frames) == 3, "strained ideal cells hold no force"
    rattled = run([SUPERCELL, {"type": "rattle", "amplitudes": [0.05], "copies": 2, "keep_parents": True}])
    assert rattled.report["force_free"] == 1 and len(rattled.frames) == 3, "only the parent"


def test_rattle_amplitudes_and_copies():
    generated = run([SUPERCELL, {"type": "rattle", "amplitudes": [0.01, 0.1], "copies": 3}])
    assert generated.report["made"] == 6 and len(generated.frames) == 6
    reference = run([SUPERCELL]).frames[0].positions
    spreads = sorted(np.std(atoms.positions - reference) for atoms in generated.frames)
    assert spreads[2] < 0.02 < 0.05 < spreads[3], spreads


def test_the_same_seed_makes_the_same_variants_and_another_seed_others():
    chain = [SUPERCELL, {"type": "rattle", "amplitudes": [0.05], "copies": 2},
             {"type": "substitution", "replace": "Cu", "by": "Ni", "fractions": [0.25]}]
    first, again, other = run(chain, seed=3), run(chain, seed=3), run(chain, seed=4)
    hashes = [[atoms.info["content_hash"] for atoms in result.frames] for result in (first, again, other)]
    assert hashes[0] == hashes[1]
    assert not set(hashes[0]) & set(hashes[2])


def test_a_variant_does_not_change_when_other_variants_are_added():
    one = run([SUPERCELL, {"type": "rattle", "amplitudes": [0.05], "copies": 1}])
    more = run([SUPERCELL, {"type": "rattle", "amplitudes": [0.05, 0.1], "copies": 3}],
               parents={"cu": CU, "ni": bulk("Ni", "fcc", a=3.52, cubic=True)})
    assert one.frames[0].info["content_hash"] in {atoms.info["content_hash"] for atoms in more.frames}


def test_vacancies_in_a_perfect_fcc_supercell_are_all_equivalent():
    generated = run([SUPERCELL, {"type": "vacancy", "count": 1, "variants": 6}])
    assert generated.report["made"] == 6
    assert len(generated.frames) == 1 and len(generated.frames[0]) == 31
    assert generated.report["dropped"] == {EXACT: 0, SYMMETRY: 5}


def test_substitution_fractions_and_keep_parents():
    generated = run([SUPERCELL, {"type": "substitution", "replace": "Cu", "by": "Ni", "fractions": [0.25, 0.5],
                                 "variants": 2, "keep_parents": True}], symmetry=False)
    counts = sorted(atoms.get_chemical_symbols().count("Ni") for atoms in generated.frames)
    assert counts == [0, 8, 8, 16, 16]


def test_substitution_of_an_absent_element_makes_no_variant():
    generated = run([{"type": "substitution", "replace": "Ni", "by": "Cu"}])
    assert generated.report["made"] == 0 and generated.frames == []


def test_surfaces_one_slab_per_miller_index_with_vacuum():
    generated = run([{"type": "surface", "miller_indices": [[1, 1, 1], [1, 0, 0], [1, 1, 0]], "min_slab_size": 6.0,
                      "min_vacuum_size": 8.0}])
    assert len(generated.frames) == 3
    for atoms in generated.frames:
        heights = atoms.get_scaled_positions()[:, 2] * atoms.cell.lengths()[2]
        assert atoms.cell.lengths()[2] - np.ptp(heights) >= 8.0 - 1e-6, "at least min_vacuum_size of vacuum"


def test_molecules_in_boxes():
    generated = run([{"type": "box", "vacuum": 4.0}], parents={"water": molecule("H2O")})
    (atoms,) = generated.frames
    assert not atoms.pbc.any()
    assert np.allclose(atoms.cell.lengths() - np.ptp(atoms.positions, axis=0), 8.0)


def test_a_periodic_step_on_a_molecule_names_the_structure():
    with pytest.raises(ValueError, match=r"strain needs a structure periodic .* H2O"):
        run([{"type": "strain", "volumetric": [0.01]}], parents={"water": molecule("H2O")})


# -------------------------------------------------------------------------------------- settings errors


@pytest.mark.parametrize("settings, message", [
    ({"type": "stretch"}, r"transformation 1: unknown transformation type 'stretch'"),
    ({"type": "strain"}, r"transformation 1: strain: give volumetric and/or shear"),
    ({"type": "strain", "volumetric": ["2%"]}, r"strain: volumetric must be a number .* not \['2%'\]"),
    ({"type": "rattle", "amplitudes": [-0.1]}, r"rattle: amplitudes must be >= 0.0, not \[-0.1\]"),
    ({"type": "rattle", "copies": 0}, r"rattle: copies must be an integer >= 1, not 0"),
    ({"type": "vacancy", "speices": "Cu"}, r"vacancy: unknown key\(s\) \['speices'\]"),
    ({"type": "substitution", "replace": "Cu", "by": "Xx"}, r"substitution: by must be a chemical symbol .* not 'Xx'"),
    ({"type": "substitution", "replace": "Cu", "by": "Ni", "fractions": [1.5]}, r"fractions must be in \[0, 1\], not \[1.5\]"),
    ({"type": "surface", "miller_indices": [1, 1, 1]}, r"surface: miller_indices must be a list .* not \[1, 1, 1\]"),
    ({"type": "supercell", "matrix": [2, 2]}, r"supercell: matrix must be .* not \[2, 2\]"),
    ({"type": "box", "periodic": "yes"}, r"box: periodic must be true or false, not 'yes'"),
])
def test_settings_errors_name_the_key_and_the_value(settings, message):
    with pytest.raises(ValueError, match=message):
        read_transformations([settings])


def test_an_error_in_a_later_step_names_the_step():
    with pytest.raises(ValueError, match=r"transformation 2: rattle: copies must be an integer >= 1, not -1"):
        read_transformations([SUPERCELL, {"type": "rattle", "copies": -1}])


# --------------------------------------------------------------------------------------- deduplication


def test_exact_repeats_are_dropped_by_content_hash():
    frames = [CU.copy(), CU.copy(), CU.copy()]
    frames[1].positions += 1e-8  # below the hash's rounding: a repeat
    frames[2].positions[0, 0] += 1e-3  # a different structure
    hashes = [content_hash(atoms) for atoms in frames]
    assert hashes[0] == hashes[1] != hashes[2]
    result = deduplicate(frames, hashes, symmetry=False)
    assert result.kept == [0, 2] and result.dropped == {1: EXACT}


def test_symmetry_dedup_keeps_structures_that_differ_by_small_strains_or_displacements():
    generated = run([SUPERCELL, {"type": "strain", "volumetric": [0.0, 0.005]},
                     {"type": "rattle", "amplitudes": [0.0, 0.01], "copies": 2}])
    # per strain: two copies rattled by 0 Å (one an exact repeat of the other) and two rattled by 0.01 Å
    assert generated.report["made"] == 8
    assert generated.report["dropped"] == {EXACT: 2, SYMMETRY: 0}
    assert len(generated.frames) == 6


def test_a_translated_copy_is_symmetry_equivalent_but_not_an_exact_repeat():
    moved = CU.copy()
    moved.translate([0.3, 0.1, 0.2])
    moved.wrap()
    frames = [CU.copy(), moved]
    result = deduplicate(frames, [content_hash(atoms) for atoms in frames])
    assert result.kept == [0] and result.dropped == {1: SYMMETRY}


# ----------------------------------------------------------------------------------- the workchain (slow)

CHAIN = [{"type": "supercell", "matrix": [2, 1, 1]},
         {"type": "substitution", "replace": "Cu", "by": "Ni", "fractions": [0.5], "keep_parents": True},
         {"type": "rattle", "amplitudes": [0.05], "copies": 3}]


def run_generation(installed_code, chain: list[dict], seed: int, parameters: dict | None = None, **inputs):
    """``GenerateDatasetWorkChain`` in the foreground on a Cu cell, labelled by EMT in jobs of 2, 2 at once.

    The tests share one profile: each uses its own ``seed``, so that no test reuses another's labels."""
    from aiida import orm
    from aiida.engine import run_get_node
    from tace_aiida.workflows.generation import GenerateDatasetWorkChain

    builder = GenerateDatasetWorkChain.get_builder()
    builder.structures = {"cu": orm.StructureData(ase=CU)}
    builder.transformations = orm.List(chain)
    builder.seed = orm.Int(seed)
    builder.label_ase.code = installed_code("tace-label")
    builder.label_ase.calculator = orm.Str("ase.calculators.emt.EMT")
    if parameters is not None:
        builder.label_ase.parameters = orm.Dict(parameters)
    builder.label_ase.structures_per_job = orm.Int(2)
    builder.label_ase.max_concurrent = orm.Int(2)
    for key, value in inputs.items():
        builder[key] = value
    return run_get_node(builder)


def label_jobs(node) -> list:
    from aiida import orm

    return [child for child in node.called_descendants if isinstance(child, orm.CalcJobNode)]


def hashes_of(dataset) -> list[str]:
    return sorted(atoms.info["content_hash"] for atoms in dataset.get_atoms())


@pytest.mark.slow
def test_generate_label_provenance_and_a_second_run_labels_nothing(aiida_profile, installed_code):
    from ase.calculators.emt import EMT

    results, node = run_generation(installed_code, CHAIN, seed=11)
    assert node.is_finished_ok, node.exit_message
    report = results["report"].get_dict()
    assert (report["made"], report["kept"], report["reused"], report["labelled"]) == (6, 6, 0, 6)
    assert report["failed"] == [] and report["structures_per_minute"] > 0
    dataset = results["dataset"]
    assert dataset.num_structures == 6 and dataset.label_counts["forces"] == 6
    assert len(label_jobs(node)) == 3, "6 structures in jobs of 2"
    for atoms in dataset.get_atoms():  # the labels are EMT's
        reference = atoms.copy()
        reference.calc = EMT()
        assert atoms.get_potential_energy() == pytest.approx(reference.get_potential_energy(), abs=1e-8)
        assert np.abs(atoms.get_forces()).max() > 1e-3, "rattled structures carry forces"

    # provenance: dataset <- assemble_dataset(structures <- generate_variants(parents ...), labels ...)
    creator = dataset.creator
    assert creator.process_label == "assemble_dataset"
    generated = creator.inputs.structures
    assert generated.creator.process_label == "generate_variants"
    assert generated.creator.inputs.transformations.get_list() == CHAIN
    assert hashes_of(generated) == hashes_of(dataset)

    again, second = run_generation(installed_code, CHAIN, seed=11)
    assert second.is_finished_ok, second.exit_message
    assert label_jobs(second) == [], "nothing labelled twice"
    assert (again["report"]["reused"], again["report"]["labelled"]) == (6, 0)
    assert hashes_of(again["dataset"]) == hashes_of(dataset)
    first_energies = {a.info["content_hash"]: a.get_potential_energy() for a in dataset.get_atoms()}
    for atoms in again["dataset"].get_atoms():
        assert atoms.get_potential_energy() == first_energies[atoms.info["content_hash"]]


@pytest.mark.slow
def test_a_second_run_labels_only_what_the_first_did_not(aiida_profile, installed_code):
    partial = [*CHAIN[:2], {"type": "rattle", "amplitudes": [0.05], "copies": 1}]  # 2 of the 6 structures
    first, node = run_generation(installed_code, partial, seed=12, parameters={"asap_cutoff": False})
    assert node.is_finished_ok and first["report"]["labelled"] == 2

    results, node = run_generation(installed_code, CHAIN, seed=12, parameters={"asap_cutoff": False})
    assert node.is_finished_ok, node.exit_message
    report = results["report"].get_dict()
    assert (report["reused"], report["labelled"], report["num_structures"]) == (2, 4, 6)
    assert sum(job.inputs.structures.num_structures for job in label_jobs(node)) == 4
    assert set(hashes_of(first["dataset"])) < set(hashes_of(results["dataset"]))

    # other labeller settings: nothing is reused
    other, node = run_generation(installed_code, partial, seed=12, parameters={"asap_cutoff": True})
    assert node.is_finished_ok and (other["report"]["reused"], other["report"]["labelled"]) == (0, 2)


@pytest.mark.slow
def test_labels_left_by_an_interrupted_run_are_reused(aiida_profile, installed_code):
    """A run killed while labelling leaves finished tace.label_ase jobs behind: their labels are reused."""
    from aiida import orm
    from aiida.engine import run_get_node
    from tace_aiida.workflows.generation import generate_variants

    from tace_aiida.calculations.label_ase import AseLabelCalculation
    from tace_aiida.data import TrainingSetData

    variants = generate_variants(orm.List(CHAIN), orm.Int(13), orm.Bool(True), cu=orm.StructureData(ase=CU))
    finished = variants["structures"].get_atoms()[:2]  # what the one job that finished before the kill labelled
    _, job = run_get_node(AseLabelCalculation, code=installed_code("tace-label"), structures=TrainingSetData(finished),
                          calculator=orm.Str("ase.calculators.emt.EMT"), parameters=orm.Dict({"asap_cutoff": True}))
    assert job.is_finished_ok

    results, node = run_generation(installed_code, CHAIN, seed=13, parameters={"asap_cutoff": True})
    assert node.is_finished_ok, node.exit_message
    report = results["report"].get_dict()
    assert (report["reused"], report["labelled"], report["num_structures"]) == (2, 4, 6)
    labelled_by = {atoms.info["content_hash"]: atoms.info["label_uuid"] for atoms in results["dataset"].get_atoms()}
    assert [labelled_by[atoms.info["content_hash"]] for atoms in finished] == [job.uuid, job.uuid]


@pytest.mark.slow
def test_over_the_failure_budget_exits_401_with_the_labels_attached(aiida_profile, installed_code):
    from aiida import orm
    from tace_aiida.workflows.generation import GenerateDatasetWorkChain

    chain = [{"type": "supercell", "matrix": [2, 1, 1]},
             {"type": "substitution", "replace": "Cu", "by": "Si", "fractions": [0.5], "keep_parents": True}]
    results, node = run_generation(installed_code, chain, seed=14, max_failure_fraction=orm.Float(0.1))
    assert node.exit_status == GenerateDatasetWorkChain.exit_codes.ERROR_TOO_MANY_LABEL_FAILURES.status
    report = results["report"].get_dict()
    assert report["labelled"] == 1 and len(report["failed"]) == 1
    failure = report["failed"][0]
    assert "Si" in failure["error"] or "EMT" in failure["error"]
    generated = results["dataset"].creator.inputs.structures.get_atoms()
    assert "Si" in generated[failure["index"]].get_chemical_symbols()
    assert results["dataset"].num_structures == 1


@pytest.mark.slow
def test_nothing_labelled_exits_402_naming_the_first_error(aiida_profile, installed_code):
    from tace_aiida.workflows.generation import GenerateDatasetWorkChain

    chain = [{"type": "supercell", "matrix": [2, 1, 1]},
             {"type": "substitution", "replace": "Cu", "by": "Si", "fractions": [1.0]}]
    results, node = run_generation(installed_code, chain, seed=16)
    assert node.exit_status == GenerateDatasetWorkChain.exit_codes.ERROR_NO_LABELS.status == 402
    assert "dataset" not in results
    assert node.exit_message.startswith("No structure could be labelled: structure 0: ")
    assert "Si" in node.exit_message or "EMT" in node.exit_message


def test_bad_transformations_are_refused_at_submission(aiida_profile, installed_code):
    with pytest.raises(ValueError, match=r"transformation 2: rattle: copies must be an integer >= 1, not 0"):
        run_generation(installed_code, [SUPERCELL, {"type": "rattle", "copies": 0}], seed=15)


# ------------------------------------------------------------------------------------------ label reuse


def test_the_labeller_key_ignores_scheduling_and_sees_settings_and_defaults(aiida_profile):
    from aiida import orm
    from tace_aiida.workflows.labelling.qe import QeLabelWorkChain

    from tace_aiida.generation.reuse import labeller_key, with_defaults

    calculator = orm.Str("ase.calculators.emt.EMT")
    base = {"calculator": calculator, "parameters": orm.Dict({"asap_cutoff": True})}
    key = labeller_key("label_ase", base)
    assert key == labeller_key("label_ase", {**base, "max_concurrent": orm.Int(3), "structures_per_job": orm.Int(9)})
    assert key != labeller_key("label_ase", {**base, "parameters": orm.Dict({"asap_cutoff": False})})
    assert key != labeller_key("label_qe", base)
    # the protocol QeLabelWorkChain fills in when none is given counts as given
    filled = with_defaults(QeLabelWorkChain, {})
    assert filled["protocol"].value == "balanced" and "max_concurrent" not in filled
    assert labeller_key("label_qe", filled) == labeller_key("label_qe", {"protocol": orm.Str("balanced")})
