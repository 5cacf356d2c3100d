"""``ActiveLearningWorkChain.get_builder_from_protocol``: each protocol validates, overrides merge, bad settings are named."""

from __future__ import annotations

import pytest
from aiida import orm
from ase.build import bulk
from tace_aiida.workflows.active_learning import ActiveLearningWorkChain
from tace_aiida.workflows.protocol_builder import to_nodes

from .conftest import FAMILY

EMT = "ase.calculators.emt.EMT"
PROTOCOLS = ("fast", "balanced", "stringent")


@pytest.fixture
def codes(installed_code) -> dict[str, orm.AbstractCode]:
    return {"train": installed_code("tace-train"), "md": installed_code("tace-md"), "label": installed_code("tace-label")}


def rattled(atoms):
    """``atoms`` displaced by 0.02 Å (an ideal crystal's labels have no forces: the loop refuses it alone)."""
    atoms.rattle(0.02, seed=1)
    return atoms


def copper() -> dict[str, orm.StructureData]:
    return {"cu": orm.StructureData(ase=rattled(bulk("Cu", "fcc", a=3.61, cubic=True)))}


def validation_error(builder) -> str | None:
    """What the spec says about the builder's inputs, defaults filled, as at submission (None: valid)."""
    spec = ActiveLearningWorkChain.spec().inputs
    error = spec.validate(spec.pre_process(builder._inputs(prune=True)))
    return None if error is None else error.message


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_each_protocol_gives_a_valid_builder(codes, protocol):
    builder = ActiveLearningWorkChain.get_builder_from_protocol(codes, copper(), protocol, calculator=EMT)
    assert validation_error(builder) is None
    expected = ActiveLearningWorkChain.get_protocol_inputs(protocol)
    assert builder.train.parameters.get_dict() == expected["train"]["parameters"]
    assert builder.exploration.get_list() == expected["exploration"]
    assert builder.ensemble_size.value == expected["ensemble_size"]
    assert builder.label_ase.calculator.value == EMT and builder.label_ase.code.uuid == codes["label"].uuid
    assert "label_qe" not in builder._inputs(prune=True)


def test_protocols_are_listed_and_balanced_is_the_default(codes):
    assert sorted(ActiveLearningWorkChain.get_available_protocols()) == sorted(PROTOCOLS)
    default = ActiveLearningWorkChain.get_builder_from_protocol(codes, copper(), calculator=EMT)
    balanced = ActiveLearningWorkChain.get_builder_from_protocol(codes, copper(), "balanced", calculator=EMT)
    assert default.train.parameters.get_dict() == balanced.train.parameters.get_dict()
    assert default.selection.get_dict() == balanced.selection.get_dict()


def test_protocols_grow_stricter(codes):
    inputs = {name: ActiveLearningWorkChain.get_protocol_inputs(name) for name in PROTOCOLS}
    sizes = [inputs[name]["train"]["parameters"]["model"]["channels"] for name in PROTOCOLS]
    windows = [inputs[name]["selection"]["trust_high"] for name in PROTOCOLS]
    assert sizes == sorted(sizes) and windows == sorted(windows, reverse=True)


def test_overrides_merge_key_by_key(codes):
    overrides = {"train": {"parameters": {"model": {"r_max": 4.0}, "max_epochs": 3}}, "stopping": {"max_iterations": 2},
                 "md": {"max_concurrent": 1}, "warm_start": False}
    builder = ActiveLearningWorkChain.get_builder_from_protocol(codes, copper(), "fast", overrides, calculator=EMT)
    fast = ActiveLearningWorkChain.get_protocol_inputs("fast")
    parameters = builder.train.parameters.get_dict()
    assert parameters["model"] == {**fast["train"]["parameters"]["model"], "r_max": 4.0}
    assert parameters["max_epochs"] == 3 and parameters["batch_size"] == fast["train"]["parameters"]["batch_size"]
    assert builder.stopping.get_dict() == {**fast["stopping"], "max_iterations": 2}
    assert builder.md.max_concurrent.value == 1 and builder.warm_start.value is False
    assert validation_error(builder) is None


def test_structures_may_be_ase_or_pymatgen_and_anything_else_is_named(codes):
    from pymatgen.io.ase import AseAtomsAdaptor

    atoms = copper()["cu"].get_ase()
    builder = ActiveLearningWorkChain.get_builder_from_protocol(
        codes, {"ase": atoms, "pymatgen": AseAtomsAdaptor.get_structure(atoms)}, "fast", calculator=EMT)
    for node in builder.structures.values():
        assert node.get_ase().positions == pytest.approx(atoms.positions, abs=1e-10)
    with pytest.raises(TypeError, match=r"structures must map labels to structures, e\.g\. \{'bulk': atoms\}, not a list"):
        ActiveLearningWorkChain.get_builder_from_protocol(codes, [atoms], "fast", calculator=EMT)
    with pytest.raises(TypeError, match=r"structures\['cu'\] must be a StructureData, an ase Atoms or a pymatgen "
                                        r"Structure, not a str"):
        ActiveLearningWorkChain.get_builder_from_protocol(codes, {"cu": "Cu.cif"}, "fast", calculator=EMT)


def test_an_override_that_is_no_input_is_named(codes):
    with pytest.raises(ValueError, match=r"unknown input 'selecton'; the inputs there are \[.*'selection'"):
        ActiveLearningWorkChain.get_builder_from_protocol(codes, copper(), "fast", {"selecton": {"max_selected": 3}},
                                                          calculator=EMT)
    with pytest.raises(ValueError, match=r"unknown input 'md.max_concurent'; the inputs there are \[.*'max_concurrent'"):
        ActiveLearningWorkChain.get_builder_from_protocol(codes, copper(), "fast", {"md": {"max_concurent": 3}},
                                                          calculator=EMT)


def test_unknown_protocol_is_refused_with_the_choices(codes):
    with pytest.raises(ValueError, match=r"unknown protocol 'quick'; choose among \['balanced', 'fast', 'stringent'\]"):
        ActiveLearningWorkChain.get_builder_from_protocol(codes, copper(), "quick", calculator=EMT)


@pytest.mark.parametrize(("change", "message"), [
    ({"calculator": None}, "labels with an ASE calculator: give `calculator`"),
    ({"pseudo_family": "SSSP"}, "pseudo_family 'SSSP' is for pw.x codes"),
    ({"codes": {"train", "md"}}, "missing ['label']"),
    ({"codes": {"train", "md", "label", "dft"}}, "unknown ['dft']"),
])
def test_wrong_codes_or_labeller_are_refused(codes, change, message):
    keys = change.pop("codes", set(codes))
    kwargs = {"calculator": EMT, **change}
    with pytest.raises(ValueError) as error:
        ActiveLearningWorkChain.get_builder_from_protocol({key: codes.get(key, codes["label"]) for key in keys},
                                                         copper(), "fast", **kwargs)
    assert message in str(error.value)


def test_a_calculator_that_does_not_import_here_is_refused_when_the_code_runs_here(codes, aiida_localhost, tmp_path):
    """The import is checked where the jobs would import it: this environment's tace-label on this machine."""
    with pytest.raises(ValueError, match=r"cannot import the ASE calculator 'ase.calculators.nope.EMT': module "
                                         r"'ase.calculators.nope' was not found \(code 'tace-label@"):
        ActiveLearningWorkChain.get_builder_from_protocol(codes, copper(), "fast", calculator="ase.calculators.nope.EMT")
    with pytest.raises(ValueError, match="module 'ase.calculators.emt' has no 'Emt'"):
        ActiveLearningWorkChain.get_builder_from_protocol(codes, copper(), "fast", calculator="ase.calculators.emt.Emt")
    elsewhere = tmp_path / "tace-label"  # another environment's script, which may have calculators this one lacks
    elsewhere.write_text("#!/bin/sh\n")
    other = orm.InstalledCode(label="tace-label-other-env", computer=aiida_localhost,
                              filepath_executable=str(elsewhere)).store()
    builder = ActiveLearningWorkChain.get_builder_from_protocol({**codes, "label": other}, copper(), "fast",
                                                                calculator="xtb.ase.calculator.XTB")
    assert builder.label_ase.calculator.value == "xtb.ase.calculator.XTB"


@pytest.mark.parametrize(("overrides", "message"), [
    ({"exploration": [{"temperatures": [300]}, {"steps": 0}]},
     "exploration stage 1: steps must be >= 1, not 0"),
    ({"exploration": [{"temperatures": [300], "timestep": "2 fs"}]},
     "exploration stage 0: timestep must be float, not str '2 fs'"),
    ({"exploration": [{"temperatures": [300], "dataset_starts": 0}]}, "dataset_starts must be >= 1, not 0"),
    ({"exploration": [{"temperatures": [300], "stop_factor": -2}]}, "stop_factor must be > 0, not -2.0"),
    ({"stopping": {"max_iterations": 0}}, "stopping: max_iterations must be >= 1, not 0"),
    ({"stopping": {"accurate_fraction": 1.2}}, "accurate_fraction must be in [0, 1], not 1.2"),
    ({"selection": {"max_selected": "many"}}, "invalid selection settings: selection setting "
                                              "max_selected: 'many' is not an integer"),
    ({"selection": {"trust_low": 0.5, "trust_high": 0.2}}, "trust_low=0.5 must be < trust_high=0.2"),
    ({"md": {"max_concurrent": 0}}, "md.max_concurrent must be >= 1, not 0"),
    ({"ensemble_size": 0}, "ensemble_size must be >= 1, not 0"),
    ({"ensemble_size": 1}, "ensemble_size 1 with selection uncertainty 'ensemble': one member has no spread"),
])
def test_bad_settings_are_refused_naming_key_and_value(codes, overrides, message):
    """Refused when the builder is filled (ValueError), and when the same inputs are submitted (spec validation)."""
    with pytest.raises(ValueError) as error:
        ActiveLearningWorkChain.get_builder_from_protocol(codes, copper(), "fast", overrides, calculator=EMT)
    assert message in str(error.value)
    builder = ActiveLearningWorkChain.get_builder_from_protocol(codes, copper(), "fast", calculator=EMT)
    spec = ActiveLearningWorkChain.spec().inputs
    inputs = builder._inputs(prune=True)
    for key, value in to_nodes(spec, overrides).items():
        inputs[key] = {**inputs[key], **value} if isinstance(value, dict) else value
    submitted = spec.validate(spec.pre_process(inputs))
    assert submitted is not None and message in submitted.message, submitted


@pytest.mark.external
@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_a_pw_code_labels_through_label_qe_with_the_pw_protocol_of_the_same_name(installed_code, qe, protocol):
    from aiida_quantumespresso.workflows.pw.base import PwBaseWorkChain

    _, pw_code = qe
    codes = {"train": installed_code("tace-train"), "md": installed_code("tace-md"), "label": pw_code}
    silicon = {"si": orm.StructureData(ase=rattled(bulk("Si", "diamond", a=5.43)))}
    overrides = {"label_qe": {"kpoints_distance": 0.8}}
    builder = ActiveLearningWorkChain.get_builder_from_protocol(codes, silicon, protocol, overrides,
                                                                pseudo_family=FAMILY)
    assert validation_error(builder) is None
    assert "label_ase" not in builder._inputs(prune=True)
    label_qe = builder.label_qe
    assert (label_qe.protocol.value, label_qe.pseudo_family.value, label_qe.kpoints_distance.value) == (protocol, FAMILY, 0.8)
    pw = PwBaseWorkChain.get_builder_from_protocol(pw_code, silicon["si"], protocol=label_qe.protocol.value,
                                                   overrides={"pseudo_family": FAMILY})
    assert pw.pw.parameters["CONTROL"]["calculation"] == "scf"
    with pytest.raises(ValueError, match="takes no ASE calculator"):
        ActiveLearningWorkChain.get_builder_from_protocol(codes, silicon, protocol, calculator=EMT)
