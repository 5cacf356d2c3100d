"""``tace.pw_base``: aiida-quantumespresso's ``PwBaseWorkChain`` whose ``run_process`` step, run again after a daemon
crash, keeps the pw.x job it sent or replaces one never sent (needs aiida-quantumespresso and pw.x; no job runs)."""

from __future__ import annotations

import pytest
from aiida import orm
from aiida.engine.utils import instantiate_process
from aiida.manage import get_manager
from ase.build import bulk

from .conftest import FAMILY, PW_OPTIONS
from .helpers.interrupted import handler_entries, iteration_01_jobs, job_of_an_interrupted_step

pytestmark = pytest.mark.external

PW_TYPE = "aiida.calculations:quantumespresso.pw"


@pytest.fixture
def workchain(qe):
    """A ``tace.pw_base`` of diamond Si after the steps before its first ``run_process``."""
    from tace_aiida.workflows.labelling.pw_base import CrashSafePwBaseWorkChain

    _, code = qe
    builder = CrashSafePwBaseWorkChain.get_builder_from_protocol(
        code, orm.StructureData(ase=bulk("Si", "diamond", a=5.43)), protocol="fast",
        overrides={"pseudo_family": FAMILY, "kpoints_distance": 0.8}, options=PW_OPTIONS,
    )
    process = instantiate_process(get_manager().get_runner(), builder)
    process.setup()
    process.validate_kpoints()
    process.prepare_process()
    return process


def test_is_aiida_quantumespresso_pw_base_workchain(workchain):
    from aiida_quantumespresso.workflows.pw.base import PwBaseWorkChain

    assert isinstance(workchain, PwBaseWorkChain)
    assert workchain.node.process_type == "aiida.workflows:tace.pw_base"


def test_run_process_again_after_a_crash_keeps_the_pw_job_it_sent(workchain):
    """The step runs again from the last checkpoint, with the same iteration number: the job sent is awaited."""
    sent = job_of_an_interrupted_step(workchain, workchain.ctx.inputs.code.computer, PW_TYPE, "state: saved")
    assert workchain.run_process()["children"].pk == sent.pk
    assert [job.pk for job in iteration_01_jobs(workchain)] == [sent.pk], "no second pw.x job"
    assert sent.process_state.value == "created"
    assert handler_entries(workchain) == [[]], "one entry for iteration 1, not one per attempt"


def test_run_process_again_after_a_crash_replaces_a_pw_job_never_sent(workchain):
    """A job stored without a checkpoint was never sent to a worker: it is marked killed and a new one submitted."""
    orphan = job_of_an_interrupted_step(workchain, workchain.ctx.inputs.code.computer, PW_TYPE, None)
    fresh = orm.load_node(workchain.run_process()["children"].pk)
    assert fresh.pk != orphan.pk and fresh.process_type == PW_TYPE
    assert fresh.inputs.parameters["CONTROL"]["calculation"] == "scf"
    assert orphan.is_killed and orphan.is_sealed
    assert handler_entries(workchain) == [[]], "one entry for iteration 1, not one per attempt"
