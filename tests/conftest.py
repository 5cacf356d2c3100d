"""Shared fixtures: real 3BPA frames, small models, random orthogonal transformations, AiiDA."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from ase import Atoms
from ase.io import read
from tace_aiida.model.potential import CartesianTensorPotential, ModelConfig

from . import external
from .external import require_module, require_program

pytest_plugins = ["aiida.tools.pytest_fixtures"]

#: The tests run tiny models, where torch's second thread saves nothing (the fast suite took 177 s with two
#: threads and 181 s with one on an idle 2-core machine) and costs 3-6x when the cores are busy; the processes
#: the tests start (daemon, dask workers, jobs) inherit the setting. An OMP_NUM_THREADS of the user's wins.
if "OMP_NUM_THREADS" not in os.environ:
    os.environ["OMP_NUM_THREADS"] = "1"
    torch.set_num_threads(1)

DATA = Path(__file__).parent / "data"
SPECIES_3BPA = [1, 6, 7, 8]


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    """Let ``tests/external.py`` see the markers of the test whose fixtures and body ask for a program."""
    external.running_test = item


@pytest.fixture(scope="session", autouse=True)
def graph_cache(tmp_path_factory) -> Iterator[Path]:
    """Edges and CP factors cached by training go to folders of the test session, not the user's
    ``~/.cache`` (inherited by the processes the tests start: dask workers, daemons)."""
    folder = tmp_path_factory.mktemp("graph-cache")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("TACE_GRAPH_CACHE", str(folder))
        patch.setenv("TACE_CP_CACHE", str(tmp_path_factory.mktemp("cp-factors")))
        yield folder


@pytest.fixture
def float64():
    """Run the test with float64 as torch's default dtype, then restore it."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(previous)


@contextmanager
def default_dtype(dtype: torch.dtype) -> Iterator[None]:
    """``with default_dtype(torch.float32):`` builds tensors and models in ``dtype``, then restores."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(previous)


@pytest.fixture(scope="module")
def one_thread() -> Iterator[None]:
    """One torch thread for a module of tiny-model tests: thread start-up costs more than it saves."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="session")
def frames_300K() -> list[Atoms]:
    return read(DATA / "3bpa_300K_40.xyz", ":")


@pytest.fixture(scope="session")
def frames_1200K() -> list[Atoms]:
    return read(DATA / "3bpa_1200K_12.xyz", ":")


def random_orthogonal(seed: int, reflect: bool) -> np.ndarray:
    """A random rotation, times -1 (a rotoreflection) when ``reflect``."""
    rng = np.random.default_rng(seed)
    q, r = np.linalg.qr(rng.normal(size=(3, 3)))
    q = q * np.sign(np.diag(r))
    if np.linalg.det(q) < 0:
        q[:, 0] *= -1
    return -q if reflect else q


def small_model(seed: int = 0, **settings) -> CartesianTensorPotential:
    """An untrained 3BPA-species model with random (non-trivial) weights in the default dtype."""
    torch.manual_seed(seed)
    defaults = dict(
        atomic_numbers=SPECIES_3BPA,
        atomic_energies=[-13.6, -1029.5, -1485.0, -2042.0],
        channels=8,
        radial_mlp=(16, 16),
        avg_num_neighbors=15.0,
        scale=1.5,
        shift=0.1,
    )
    defaults.update(settings)
    return CartesianTensorPotential(ModelConfig(**defaults)).eval()


def periodic_cell(seed: int = 0, n_atoms: int = 12, length: float = 6.0) -> Atoms:
    """A random triclinic periodic cell of H, C, N, O atoms no closer than 0.9 Å."""
    rng = np.random.default_rng(seed)
    cell = length * (np.eye(3) + 0.15 * rng.normal(size=(3, 3)))
    atoms = Atoms(cell=cell, pbc=True)
    while len(atoms) < n_atoms:
        candidate = rng.random(3) @ cell
        trial = Atoms([int(rng.choice(SPECIES_3BPA))], positions=[candidate], cell=cell, pbc=True)
        merged = atoms + trial
        if len(atoms) == 0 or merged.get_distances(len(atoms), range(len(atoms)), mic=True).min() > 0.9:
            atoms = merged
    return atoms


@dataclass(frozen=True)
class ModelCase:
    """One model configuration of the physics suite (``tests/test_model_physics.py``).

    ``settings`` override :func:`small_model`'s. Small E0s keep energy differences precise and a
    large scale gives O(0.1-1) eV/Å forces. Tolerances are relative to the largest |E|, |F| or
    |virial| (at least 1): 1e-10 in float64, 1e-5 in float32.
    """

    settings: tuple[tuple[str, object], ...]
    dtype: torch.dtype = torch.float64

    @property
    def tolerance(self) -> float:
        return 1e-10 if self.dtype == torch.float64 else 1e-5

    @property
    def long_range(self) -> bool:
        return dict(self.settings).get("long_range", False)

    def build(self, seed: int = 3) -> CartesianTensorPotential:
        with default_dtype(self.dtype):
            return small_model(seed=seed, atomic_energies=[0.1, -0.2, 0.3, 0.05], scale=20.0, **dict(self.settings))


def model_case(dtype: torch.dtype = torch.float64, slow: bool = False, **settings):
    """``pytest.param`` of a :class:`ModelCase`, named after its settings, marked ``slow`` if asked."""
    name = "-".join(f"{key}={value}" for key, value in settings.items()) + f"-{str(dtype).removeprefix('torch.')}"
    case = ModelCase(tuple(settings.items()), dtype)
    return pytest.param(case, id=name, marks=[pytest.mark.slow] if slow else [])


#: The configurations every physics test runs on; a new model option is one more line here.
MODEL_CASES = [
    model_case(max_edge_rank=3, correlation=3, max_hidden_rank=2),
    model_case(max_edge_rank=2, correlation=1, max_hidden_rank=0),
    model_case(max_edge_rank=2, correlation=2, max_hidden_rank=1, num_interactions=3),
    model_case(max_edge_rank=4, correlation=2, max_hidden_rank=1),
    model_case(max_edge_rank=3, correlation=2, max_hidden_rank=0, num_interactions=1),
    model_case(max_edge_rank=3, correlation=3, max_hidden_rank=1, dtype=torch.float32),
    model_case(max_edge_rank=3, correlation=2, max_hidden_rank=1, long_range=True),
    model_case(max_edge_rank=2, correlation=2, max_hidden_rank=1, long_range=True, dtype=torch.float32),
    model_case(max_edge_rank=3, correlation=2, max_hidden_rank=1, dipole=True, polarizability=True),
    model_case(max_edge_rank=2, correlation=2, max_hidden_rank=0, num_interactions=1, dipole=True, dtype=torch.float32),
    model_case(max_edge_rank=2, correlation=2, max_hidden_rank=1, embed_charge=True, embed_spin=True, num_fidelities=2,
               embed_field=True, long_range=True),
    model_case(max_edge_rank=2, correlation=3, max_hidden_rank=1, tensor_decomposition=True, cp_rank=40),
    model_case(max_edge_rank=3, correlation=2, max_hidden_rank=1, tensor_decomposition=True, cp_trainable=True,
               dtype=torch.float32),
    model_case(max_edge_rank=3, correlation=3, max_hidden_rank=1, message_normalization="mean"),
    model_case(max_edge_rank=3, correlation=2, max_hidden_rank=1, bessel_trainable=False, dtype=torch.float32),
    model_case(max_edge_rank=4, correlation=3, max_hidden_rank=2, slow=True),
    model_case(max_edge_rank=4, correlation=1, max_hidden_rank=4, slow=True),
    model_case(max_edge_rank=2, correlation=3, max_hidden_rank=2, channels=4, slow=True),
    model_case(max_edge_rank=4, correlation=3, max_hidden_rank=2, dtype=torch.float32, slow=True),
    model_case(max_edge_rank=2, correlation=1, max_hidden_rank=1, dtype=torch.float32, slow=True),
]


@pytest.fixture(params=MODEL_CASES)
def physics_case(request) -> ModelCase:
    """Each of :data:`MODEL_CASES` in turn."""
    return request.param


@pytest.fixture
def physics_model(physics_case) -> CartesianTensorPotential:
    """The random-weight model of the current :data:`MODEL_CASES` entry, in its dtype."""
    return physics_case.build()


@pytest.fixture
def ensemble_checkpoints(tmp_path) -> list[str]:
    """Three float64 random-weight checkpoints of one architecture with different seeds and data
    statistics (E0s, scale, shift, mean neighbour count), as a bootstrap ensemble has."""
    from tace_aiida.model.checkpoint import save_checkpoint

    paths = []
    with default_dtype(torch.float64):
        for member in range(3):
            model = small_model(
                seed=10 + member, max_hidden_rank=2, scale=20.0 + member, shift=0.1 * member,
                atomic_energies=[0.1 * member, -0.2, 0.3, 0.05], avg_num_neighbors=15.0 + member,
            )
            paths.append(str(save_checkpoint(tmp_path / f"member_{member}.pt", model)))
    return paths


def training_settings(output_dir: Path, **overrides) -> dict:
    """A short, real training run on the 3BPA slice: 30 training frames, 10 validation frames."""
    settings = dict(
        train_file=str(DATA / "3bpa_300K_40.xyz"),
        valid_fraction=0.25,
        e0s_file=str(DATA / "3bpa_iso_atoms.xyz"),
        model={"channels": 16, "radial_mlp": [32, 32]},
        max_epochs=8,
        batch_size=4,
        dtype="float64",
        output_dir=str(output_dir),
        progress_bar=False,
    )
    settings.update(overrides)
    return settings


@pytest.fixture(scope="session")
def trained(tmp_path_factory) -> dict:
    """Summary of one real training run (checkpoint path, metrics), shared by the slow tests."""
    from tace_aiida.model.config import TrainingConfig
    from tace_aiida.model.training import train

    output = tmp_path_factory.mktemp("trained")
    return train(TrainingConfig.from_dict(training_settings(output)))


@pytest.fixture
def installed_code(aiida_localhost):
    """``installed_code("tace-train")``: the console script as an InstalledCode on localhost."""
    from aiida import orm
    from aiida.common.exceptions import NotExistent

    def get(label: str):
        try:
            return orm.load_code(f"{label}@{aiida_localhost.label}")
        except NotExistent:
            code = orm.InstalledCode(label=label, computer=aiida_localhost, filepath_executable=shutil.which(label))
            return code.store()

    return get


@pytest.fixture
def parse_retrieved(aiida_localhost):
    """``parse_retrieved(entry_point, files, temporary=None, scheduler_exit_status=None)``: run a parser on a fake
    finished CalcJob with retrieved ``files``, ``temporary`` retrieved files, and the scheduler's exit status."""
    from aiida import orm
    from aiida.common.links import LinkType
    from aiida.plugins import ParserFactory

    def parse(entry_point: str, files: dict[str, bytes], temporary: dict[str, bytes] | None = None,
              scheduler_exit_status: int | None = None):
        node = orm.CalcJobNode(computer=aiida_localhost, process_type=f"aiida.calculations:{entry_point}")
        node.set_option("resources", {"num_machines": 1, "num_mpiprocs_per_machine": 1})
        node.store()
        if scheduler_exit_status is not None:
            node.set_exit_status(scheduler_exit_status)
        retrieved = orm.FolderData()
        for name, content in files.items():
            retrieved.base.repository.put_object_from_bytes(content, name)
        retrieved.base.links.add_incoming(node, link_type=LinkType.CREATE, link_label="retrieved")
        retrieved.store()
        if temporary is None:
            return ParserFactory(entry_point).parse_from_node(node, store_provenance=False)
        with tempfile.TemporaryDirectory() as folder:
            for name, content in temporary.items():
                (Path(folder) / name).write_bytes(content)
            return ParserFactory(entry_point).parse_from_node(node, store_provenance=False,
                                                              retrieved_temporary_folder=folder)

    return parse


FAMILY = "tace-tests/Si-H.pbe"
CUTOFFS_RY = (20.0, 80.0)
PW_OPTIONS = {"withmpi": False, "max_wallclock_seconds": 600}


@pytest.fixture
def fast_polling(aiida_profile, aiida_localhost):
    """Test profiles poll processes without delay; let the computer be polled without delay too."""
    aiida_localhost.set_minimum_job_poll_interval(0.0)
    aiida_localhost.configure(safe_interval=0.0)


@pytest.fixture
def qe(aiida_profile, aiida_code_installed):
    """The ``QeLabelWorkChain``, a pw.x code and a Si and H pseudopotential family."""
    require_module("aiida_quantumespresso")
    executable = require_program("pw.x")
    from tace_aiida.workflows.labelling.qe import QeLabelWorkChain

    from tace_aiida.pseudos import ensure_pseudo_family

    code = aiida_code_installed(label="pw", default_calc_job_plugin="quantumespresso.pw",
                                filepath_executable=executable)
    ensure_pseudo_family(FAMILY, {"Si": "Si.pbe-rrkj.UPF", "H": "H.pbe-kjpaw.UPF"},
                         cutoffs={"Si": CUTOFFS_RY, "H": CUTOFFS_RY})
    return QeLabelWorkChain, code
