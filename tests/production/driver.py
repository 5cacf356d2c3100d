"""Run by the production tests in a process of its own, on the profile that AIIDA_PATH points to.

    python driver.py submit-loop [EPOCHS]  submit a small active-learning loop to the daemon (members trained for
                                           EPOCHS, default 6); prints its PK
    python driver.py watch PK              one JSON line whenever the set of active children changes, until PK ends
    python driver.py submit-and-watch      submit-loop, its PK as a JSON line, then watch it (no step is missed)
    python driver.py facts PK              JSON facts about the finished run, for the test's assertions
    python driver.py read-slowly SECONDS   hold long read queries open for SECONDS (a user's script beside a run)
    python driver.py find-text TEXT        where TEXT is stored: attributes, extras, repository files, logs
    python driver.py wait PK SECONDS       until PK has terminated
    python driver.py wait-for-job PK SECONDS   until a dask job of PK runs; its working directories
    python driver.py job-facts PK          JSON: unterminated descendants of PK, and each dask job's state and live processes
    python driver.py submit-training SECONDS WALLTIME   one member trained for SECONDS of training on dask, in jobs
                                           of at most WALLTIME seconds (0: no wall time); its PK
    python driver.py kill-worker-of PK     SIGKILL the dask worker that runs a job of PK, once it completed an epoch
    python driver.py training-facts PK     JSON: each job's exit status and restart links, the epochs trained
    python driver.py submit-generation     generate 12 copper variants (strains, rattles) labelled by EMT on dask; its PK
    python driver.py generation-facts PK   JSON: the report's counts, label jobs started, the frames' content hashes
    python driver.py submit-labelling N    submit the labelling of N copper cells with EMT on the dask workers; its PK
    python driver.py labelling-facts PK    JSON counts and timings of that labelling

The test process itself keeps the pytest profile loaded; everything on the production profile happens here.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from aiida import load_profile, orm
from aiida.common.links import LinkType
from aiida.engine import submit
from aiida.manage import get_manager
from ase.build import bulk
from sqlalchemy.exc import OperationalError

TRAINING = {"model": {"channels": 4, "max_edge_rank": 1, "max_hidden_rank": 0, "correlation": 2, "r_max": 4.0,
                      "radial_mlp": [8]},
            "max_epochs": 6, "batch_size": 2, "valid_fraction": 0.0, "dtype": "float32", "device": "cpu"}
STAGE = {"temperatures": [500], "steps": 40, "timestep": 2.0, "save_interval": 4}


def copper(strain: float) -> orm.StructureData:
    atoms = bulk("Cu", "fcc", a=3.61 * (1 + strain), cubic=True)
    atoms.rattle(0.02, seed=int(strain * 100))
    return orm.StructureData(ase=atoms)


def submit_loop(epochs: int = TRAINING["max_epochs"]) -> int:
    """Two stages, each converged after one iteration (``accurate_fraction`` 0), 3 frames labelled in each:
    the run labels, trains, explores, selects and merges twice and ends with exit status 0."""
    from tace_aiida.workflows.active_learning import ActiveLearningWorkChain

    builder = ActiveLearningWorkChain.get_builder()
    builder.structures = {"cu0": copper(0.0), "cu1": copper(0.02)}
    builder.label_ase.code = orm.load_code("tace-label@localhost")
    builder.label_ase.calculator = orm.Str("ase.calculators.emt.EMT")
    builder.train.code = orm.load_code("tace-train@localhost-dask")
    builder.train.parameters = orm.Dict({**TRAINING, "max_epochs": epochs})
    builder.ensemble_size = orm.Int(2)
    builder.md.code = orm.load_code("tace-md@localhost-dask")
    builder.exploration = orm.List([{**STAGE, "name": "first"}, {**STAGE, "name": "second"}])
    builder.selection = orm.Dict({"trust_low": 0.0, "trust_high": 100.0, "max_selected": 3})
    builder.stopping = orm.Dict({"accurate_fraction": 0.0, "max_iterations": 4})
    return submit(builder).pk


def active_children(node: orm.WorkflowNode) -> list[str]:
    """Link labels of the descendants of ``node`` that have not terminated (nested ones as parent/child)."""
    labels = []
    for link in node.base.links.get_outgoing(link_type=(LinkType.CALL_CALC, LinkType.CALL_WORK)).all():
        child = link.node
        if not child.is_terminated:
            labels.append(link.link_label)
        if isinstance(child, orm.WorkflowNode):
            labels += [f"{link.link_label}/{label}" for label in active_children(child)]
    return sorted(labels)


def watch(pk: int, poll: float = 0.3) -> None:
    """Print the active children of ``pk`` whenever they change. A database connection ended by the server
    (``verdi process repair`` terminates the other connections on PostgreSQL) is opened again."""
    previous = None
    while True:
        try:
            node = orm.load_node(pk)
            terminated = node.is_terminated
            active = [] if terminated else active_children(node)
        except OperationalError:
            get_manager().get_profile_storage().get_session().rollback()
            time.sleep(poll)
            continue
        if terminated:
            print(json.dumps({"done": True, "exit_status": node.exit_status, "state": node.process_state.value}),
                  flush=True)
            return
        if active != previous:
            print(json.dumps({"done": False, "active": active}), flush=True)
            previous = active
        time.sleep(poll)


def outputs_of(process) -> list:
    """The nodes ``process`` created or returned."""
    return [link.node for link in process.base.links.get_outgoing(link_type=(LinkType.CREATE, LinkType.RETURN)).all()]


def facts(pk: int) -> dict:
    from tace_aiida.workflows.resubmission import never_ran

    node = orm.load_node(pk)
    facts = {"exit_status": node.exit_status, "exit_message": node.exit_message,
             "state": node.process_state.value if node.process_state else None}
    if not node.is_finished_ok:
        return facts
    report = node.outputs.report.get_dict()
    frames = node.outputs.dataset.get_atoms()
    label_processes = {}
    for uuid in {atoms.info.get("label_uuid") for atoms in frames}:
        process = orm.load_node(uuid) if uuid else None
        label_processes[str(uuid)] = process is not None and process.is_finished_ok
    facts.update(
        stop_reason=report["stop_reason"],
        iterations=len(report["iterations"]),
        selected=[entry["selected"] for entry in report["iterations"]],
        frames=len(frames),
        initial_frames=sum("source_frame" not in atoms.info for atoms in frames),
        selected_frames=[[atoms.info["source_uuid"], int(atoms.info["source_frame"])]
                         for atoms in frames if "source_frame" in atoms.info],
        label_processes_finished_ok=label_processes,
        excepted_descendants=[{"pk": n.pk, "class": type(n).__name__, "label": n.process_label,
                               "never_ran": never_ran(n), "outputs": len(outputs_of(n)),
                               "outputs_used": sum(len(output.base.links.get_outgoing(
                                   link_type=(LinkType.INPUT_CALC, LinkType.INPUT_WORK)).all()) for output in outputs_of(n))}
                              for n in node.called_descendants if n.is_excepted],
        unterminated_descendants=[{"pk": n.pk, "label": n.process_label, "caller": n.caller.pk,
                                   "state": n.process_state.value if n.process_state else None,
                                   "status": n.process_status, "has_checkpoint": n.checkpoint is not None}
                                  for n in node.called_descendants if not n.is_terminated],
        finished_calcjobs={kind: sum(n.is_finished_ok for n in node.called_descendants
                                     if (n.process_type or "").endswith(kind))
                           for kind in ("tace.label_ase", "tace.train", "tace.md")},
    )
    return facts


def dask_jobs(node: orm.ProcessNode) -> list[tuple[orm.CalcJobNode, str]]:
    """The CalcJobs below ``node`` that have a job folder with a dask job state file, and that folder."""
    from tace_aiida.schedulers import STATE_FILENAME

    jobs = [(job, job.get_remote_workdir()) for job in node.called_descendants if isinstance(job, orm.CalcJobNode)]
    return [(job, workdir) for job, workdir in jobs if workdir and (Path(workdir) / STATE_FILENAME).is_file()]


def wait_for_job(pk: int, seconds: float) -> list[str]:
    """The working directories of the dask jobs of ``pk`` that run, as soon as there is one."""
    from tace_aiida.schedulers import JobStatus, read_job_state

    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        running = [workdir for _, workdir in dask_jobs(orm.load_node(pk))
                   if read_job_state(workdir).status is JobStatus.RUNNING]
        if running:
            return running
        time.sleep(0.3)
    raise SystemExit(f"no dask job of process {pk} ran within {seconds} s")


def job_facts(pk: int) -> dict:
    """What is left of ``pk`` and its dask jobs: descendants not terminated, each job's state and live processes."""
    import psutil

    from tace_aiida.schedulers import read_job_state

    node = orm.load_node(pk)
    jobs = []
    for job, workdir in dask_jobs(node):
        state = read_job_state(workdir)
        alive = []
        for process in psutil.process_iter(["pid", "cwd"]):
            if (process.info["cwd"] or "").startswith(workdir) and process.status() != psutil.STATUS_ZOMBIE:
                alive.append(process.info["pid"])
        jobs.append({"pk": job.pk, "status": state.status.value, "ending": state.ending and state.ending.value,
                     "alive": alive})
    return {"state": node.process_state.value, "jobs": jobs,
            "unterminated": [n.pk for n in node.called_descendants if not n.is_terminated]}


def submit_training(seconds: float, walltime: int) -> int:
    """A ``tace.train_base`` run on the dask computer that ends by its time budget of ``seconds``, in jobs of at most
    ``walltime`` seconds (0: none)."""
    from ase.io import read
    from tace_aiida.workflows.train import TrainBaseWorkChain

    from tace_aiida.data import TrainingSetData

    frames = read(Path(__file__).parents[1] / "data" / "3bpa_300K_40.xyz", index=":8")
    parameters = {**TRAINING, "max_epochs": 100_000, "patience": 100_000, "time_budget": seconds, "batch_size": 4,
                  "valid_fraction": 0.25, "model": {**TRAINING["model"], "r_max": 5.0}}
    builder = TrainBaseWorkChain.get_builder()
    builder.train.code = orm.load_code("tace-train@localhost-dask")
    builder.train.dataset = TrainingSetData(frames)
    builder.train.parameters = orm.Dict(parameters)
    if walltime:
        builder.train.metadata.options.max_wallclock_seconds = walltime
    builder.max_iterations = orm.Int(25)
    return submit(builder).pk


def kill_worker_of(pk: int, seconds: float = 300) -> dict:
    """SIGKILL the dask worker process running a job of ``pk`` once the job wrote its first restart file."""
    import os
    import signal

    from distributed import Client

    from tace_aiida.dask_cluster import scheduler_address
    from tace_aiida.schedulers import read_job_state

    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        for job, workdir in dask_jobs(orm.load_node(pk)):
            if (Path(workdir) / "restart.pt").is_file():
                worker = read_job_state(workdir).worker
                with Client(scheduler_address(), timeout=10, set_as_default=False) as client:
                    pid = client.run(os.getpid, workers=[worker])[worker]
                os.kill(pid, signal.SIGKILL)
                return {"job": job.pk, "worker": worker, "pid": pid}
        time.sleep(0.3)
    raise SystemExit(f"no job of process {pk} completed an epoch within {seconds} s")


def training_facts(pk: int) -> dict:
    node = orm.load_node(pk)
    jobs = sorted((n for n in node.called if isinstance(n, orm.CalcJobNode)), key=lambda n: n.pk)
    metrics = node.outputs.metrics.get_dict() if "metrics" in node.outputs else {}
    return {"exit_status": node.exit_status, "exit_message": node.exit_message,
            "jobs": [{"pk": job.pk, "exit_status": job.exit_status, "has_restart": "restart" in job.outputs,
                      "continues": job.inputs.restart.uuid if "restart" in job.inputs else None,
                      "restart": job.outputs.restart.uuid if "restart" in job.outputs else None} for job in jobs],
            "epochs": [entry["epoch"] for entry in metrics.get("epochs", [])],
            "resumed_after_epoch": metrics.get("resumed_after_epoch"), "stop_reason": metrics.get("stop_reason"),
            "wall_seconds": metrics.get("wall_seconds")}


def submit_generation() -> int:
    from tace_aiida.generation.cli import build

    transformations = [{"type": "strain", "volumetric": [-0.02, 0.02]},
                       {"type": "rattle", "amplitudes": [0.05], "copies": 4}]
    parents = {"cu": orm.StructureData(ase=bulk("Cu", "fcc", a=3.61, cubic=True))}
    builder = build(parents, transformations, code="tace-label@localhost-dask", calculator="ase.calculators.emt.EMT",
                    structures_per_job=4, max_concurrent=2)
    return submit(builder).pk


def generation_facts(pk: int) -> dict:
    node = orm.load_node(pk)
    report = node.outputs.report.get_dict() if "report" in node.outputs else {}
    frames = node.outputs.dataset.get_atoms() if "dataset" in node.outputs else []
    return {"exit_status": node.exit_status, **{key: report.get(key) for key in ("num_structures", "reused", "labelled")},
            "failed": len(report.get("failed", [])),
            "label_jobs": sum((n.process_type or "").endswith("tace.label_ase") for n in node.called_descendants),
            "hashes": sorted(atoms.info["content_hash"] for atoms in frames),
            "energies_finite": all(abs(atoms.get_potential_energy()) < 1e6 for atoms in frames)}


def submit_labelling(count: int) -> int:
    """Label ``count`` rattled 4-atom copper cells with EMT in jobs of 50 structures, at most 8 alive at once, on
    the dask workers."""
    from tace_aiida.workflows.labelling.ase_batches import AseLabelBatchesWorkChain

    from tace_aiida.data import TrainingSetData

    frames = []
    for index in range(count):
        atoms = bulk("Cu", "fcc", a=3.61, cubic=True)
        atoms.rattle(0.05, seed=index)
        frames.append(atoms)
    builder = AseLabelBatchesWorkChain.get_builder()
    builder.structures = TrainingSetData(frames)
    builder.code = orm.load_code("tace-label@localhost-dask")
    builder.calculator = orm.Str("ase.calculators.emt.EMT")
    builder.structures_per_job = orm.Int(50)
    builder.max_concurrent = orm.Int(8)
    return submit(builder).pk


def labelling_facts(pk: int) -> dict:
    """Labelled and failed structures, wall time of the run, and the seconds in which at least one job's labeller ran."""
    from tace_aiida.schedulers import busy_seconds, read_job_state

    node = orm.load_node(pk)
    jobs = [child for child in node.called if isinstance(child, orm.CalcJobNode)]
    states = [read_job_state(job.outputs.retrieved) for job in jobs if "retrieved" in job.outputs]
    report = node.outputs.report.get_dict() if "report" in node.outputs else {}
    labelled = [int(atoms.info["input_index"]) for atoms in node.outputs.dataset.get_atoms()] \
        if "dataset" in node.outputs else []
    failed = [entry["index"] for entry in report.get("failures", [])]
    count = node.inputs.structures.num_structures
    return {"exit_status": node.exit_status, "inputs": count, "labelled": len(labelled), "failed": len(failed),
            "missing_or_repeated": sorted(set(range(count)) ^ set(labelled + failed)) if len(set(labelled + failed))
            == len(labelled + failed) else "repeated", "jobs": len(jobs),
            "labeller_compute_seconds": report.get("seconds"),
            "wall_seconds": (node.mtime - node.ctime).total_seconds(),
            "labeller_seconds": busy_seconds(states)}


def read_slowly(seconds: float) -> None:
    """Page through every node with a pause per row, as a user's analysis script does, for ``seconds``."""
    deadline, passes = time.monotonic() + seconds, 0
    while time.monotonic() < deadline:
        for _ in orm.QueryBuilder().append(orm.Node, project=["id", "attributes"]).iterall(batch_size=5):
            time.sleep(0.02)
            if time.monotonic() > deadline:
                break
        passes += 1
    print(json.dumps({"passes": passes}), flush=True)


def find_text(text: str) -> dict:
    """Every node attribute, extra, repository file and log message of the profile that contains ``text``."""
    places, files = [], 0
    nodes = orm.QueryBuilder().append(orm.Node).all(flat=True)
    for node in nodes:
        for kind, values in (("attributes", node.base.attributes.all), ("extras", node.base.extras.all)):
            if text in json.dumps(values, default=str):
                places.append(f"{kind} of {node.pk}")
        for root, _, names in node.base.repository.walk():
            for name in names:
                files += 1
                if text.encode() in node.base.repository.get_object_content(str(root / name), mode="rb"):
                    places.append(f"file {root / name} of {node.pk}")
    for log in orm.QueryBuilder().append(orm.Log).all(flat=True):
        if text in log.message or text in json.dumps(log.metadata, default=str):
            places.append(f"log {log.pk}")
    return {"places": places, "searched_nodes": len(nodes), "searched_files": files}


def wait(pk: int, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while not orm.load_node(pk).is_terminated:
        if time.monotonic() > deadline:
            raise SystemExit(f"process {pk} did not terminate within {seconds} s")
        time.sleep(0.5)


if __name__ == "__main__":
    load_profile()
    command, *arguments = sys.argv[1:]
    if command == "submit-loop":
        print(submit_loop(*map(int, arguments)), flush=True)
    elif command == "watch":
        watch(int(arguments[0]))
    elif command == "submit-and-watch":
        pk = submit_loop()
        print(json.dumps({"pk": pk}), flush=True)
        watch(pk)
    elif command == "facts":
        print(json.dumps(facts(int(arguments[0]))), flush=True)
    elif command == "find-text":
        print(json.dumps(find_text(arguments[0])), flush=True)
    elif command == "wait":
        wait(int(arguments[0]), float(arguments[1]))
    elif command == "wait-for-job":
        print(json.dumps(wait_for_job(int(arguments[0]), float(arguments[1]))), flush=True)
    elif command == "job-facts":
        print(json.dumps(job_facts(int(arguments[0]))), flush=True)
    elif command == "submit-training":
        print(submit_training(float(arguments[0]), int(arguments[1])), flush=True)
    elif command == "kill-worker-of":
        print(json.dumps(kill_worker_of(int(arguments[0]))), flush=True)
    elif command == "training-facts":
        print(json.dumps(training_facts(int(arguments[0]))), flush=True)
    elif command == "submit-generation":
        print(submit_generation(), flush=True)
    elif command == "generation-facts":
        print(json.dumps(generation_facts(int(arguments[0]))), flush=True)
    elif command == "submit-labelling":
        print(submit_labelling(int(arguments[0])), flush=True)
    elif command == "labelling-facts":
        print(json.dumps(labelling_facts(int(arguments[0]))), flush=True)
    elif command == "read-slowly":
        read_slowly(float(arguments[0]))
    else:
        raise SystemExit(f"unknown command {command!r}")

