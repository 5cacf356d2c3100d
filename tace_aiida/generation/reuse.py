"""Finding labels made earlier for the same structures with the same labeller, so that nothing is labelled twice.

A labeller is identified by a key: the hash of its inputs that change labels (code, calculator, parameters,
properties, pseudopotentials, protocol, overrides ...), not of those that only schedule work (structures,
``structures_per_job``, ``max_concurrent``, ``options``). A labelled frame is identified by the
``content_hash`` in its info (set by :func:`tace_aiida.generation.generate`). The earlier labels are the
``dataset`` outputs of terminated labelling processes (each ``tace.label_ase`` job, each ``tace.label_qe``
run) whose key is the same: a run killed half-way keeps the labels of every job that finished.

The lookup is indexed by extras, so that it costs what matches, not every labelling process ever run: a
labelling process carries its key in the extra ``KEY_EXTRA``, its ``dataset`` the content hashes of its
frames in the extra ``HASHES_EXTRA``. A process or dataset without them gets them the first time a lookup
meets it, so the labels found are the same with or without the index. After that, a lookup queries the
processes by key and intersects the hash lists read from the database, opening no frame file.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from typing import Any

from aiida import orm
from aiida.common.links import LinkType
from aiida.manage import get_manager

from tace_aiida.data import TrainingSetData

# The processes whose outputs hold labels, per labeller namespace of the workchains.
LABELLING_PROCESSES = {"label_ase": "aiida.calculations:tace.label_ase", "label_qe": "aiida.workflows:tace.label_qe"}
SCHEDULING_INPUTS = frozenset({"structures", "structures_per_job", "max_concurrent", "options", "metadata"})
TERMINATED = ["finished", "excepted", "killed"]
# The index: a new version of ``labeller_key`` takes a new ``KEY_EXTRA``, so that no stale key is trusted.
KEY_EXTRA = "tace_labeller_key_v1"
HASHES_EXTRA = "tace_content_hashes"


def _plain(value: Any) -> Any:
    """A JSON-serialisable stand-in of an input: the value of base types, the content of Dict/List, else the uuid."""
    if isinstance(value, Mapping):
        return {key: _plain(item) for key, item in sorted(value.items())}
    if isinstance(value, orm.Dict):
        return value.get_dict()
    if isinstance(value, orm.List):
        return value.get_list()
    if isinstance(value, orm.BaseType):
        return value.value
    if isinstance(value, orm.Node):
        return f"uuid:{value.uuid}"
    return value


def labeller_key(kind: str, inputs: Mapping[str, Any]) -> str:
    """The key of labeller ``kind`` (``label_ase`` or ``label_qe``) with ``inputs`` (nested namespaces allowed)."""
    relevant = {name: _plain(value) for name, value in inputs.items() if name not in SCHEDULING_INPUTS}
    text = json.dumps({"kind": kind, "inputs": relevant}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def node_inputs(node: orm.ProcessNode) -> dict[str, Any]:
    """The inputs of a stored process, namespaces nested (link labels ``a__b`` become ``{"a": {"b": ...}}``)."""
    nested: dict[str, Any] = {}
    links = node.base.links.get_incoming(link_type=(LinkType.INPUT_CALC, LinkType.INPUT_WORK)).all()
    for link in links:
        *path, name = link.link_label.split("__")
        target = nested
        for part in path:
            target = target.setdefault(part, {})
        target[name] = link.node
    return nested


def _labelling_processes(kind: str, code: orm.AbstractCode, filters: dict[str, Any]) -> orm.QueryBuilder:
    """A query of the terminated ``kind`` processes run with ``code`` that match ``filters`` (tag ``process``)."""
    query = orm.QueryBuilder()
    query.append(orm.ProcessNode, tag="process", filters={"process_type": LABELLING_PROCESSES[kind],
                                                          "attributes.process_state": {"in": TERMINATED}, **filters})
    query.append(orm.AbstractCode, with_outgoing="process", filters={"uuid": code.uuid},
                 edge_filters={"label": "code"})
    return query


def index_labeller_keys(kind: str, code: orm.AbstractCode) -> int:
    """Store the key of every terminated ``kind`` process run with ``code`` that has none; how many there were."""
    query = _labelling_processes(kind, code, {"extras": {"!has_key": KEY_EXTRA}})
    query.add_projection("process", "*")
    processes = query.all(flat=True)
    with get_manager().get_profile_storage().transaction():
        for process in processes:
            process.base.extras.set(KEY_EXTRA, labeller_key(kind, node_inputs(process)))
    return len(processes)


def content_hashes(dataset: TrainingSetData) -> list[str]:
    """The ``content_hash`` of every frame of ``dataset`` that has one: from its extra, else read from its
    frames and stored in the extra."""
    hashes = dataset.base.extras.get(HASHES_EXTRA, None)
    if hashes is None:
        hashes = [atoms.info["content_hash"] for atoms in dataset.get_atoms() if "content_hash" in atoms.info]
        dataset.base.extras.set(HASHES_EXTRA, hashes)
    return hashes


def earlier_labels(kind: str, code: orm.AbstractCode, key: str, wanted: Iterable[str]) -> dict[str, TrainingSetData]:
    """The labelled datasets of terminated ``kind`` processes run with ``code`` and labeller ``key`` that hold
    any of the ``wanted`` content hashes, by the process's uuid."""
    wanted = set(wanted)
    index_labeller_keys(kind, code)
    query = _labelling_processes(kind, code, {f"extras.{KEY_EXTRA}": key})
    query.add_projection("process", "uuid")
    query.append(TrainingSetData, with_incoming="process", edge_filters={"label": "dataset"},
                 project=["id", f"extras.{HASHES_EXTRA}"])
    found = {}
    with get_manager().get_profile_storage().transaction():
        for uuid, pk, hashes in query.all():
            if hashes is None:
                hashes = content_hashes(orm.load_node(pk))
            if not wanted.isdisjoint(hashes):
                found[uuid] = orm.load_node(pk)
    return found


def with_defaults(process_class: type, inputs: Mapping[str, Any]) -> dict[str, Any]:
    """``inputs`` with the defaults ``process_class`` fills in for the inputs that change labels, so that the key
    of a labeller given its default protocol equals that of the process it launched."""
    complete = dict(inputs)
    for name, port in process_class.spec().inputs.items():
        if name in complete or name in SCHEDULING_INPUTS or not getattr(port, "has_default", lambda: False)():
            continue
        complete[name] = port.default() if callable(port.default) else port.default
    return complete
