"""Datasets at scale, before and after the HDF5 frame store: repository bytes, read and merge rates, graphs.

(a) 50 merges of 200 new frames onto a 10,000-frame set (32-atom Cu cells with energy, forces,
    stress, ``label_uuid`` and ``source_frame``): the bytes of the profile's repository against
    the bytes of the final frames stored once; (b) frames per second of ``get_atoms`` on the final
    set and of the merges; (c) 100,000 frames of 32 atoms (in frame stores of 10,000) read into
    the trainer's graphs at the model's r_max: before, as Atoms through ``frames_to_graphs`` with
    matscipy neighbour lists (10,000 frames, also with vesin's); now, from the columns
    (``store_graphs``), first with an empty edge cache, then again with the cached edges.

"Before" is the extxyz dataset and the merge that rewrote every frame into a new extxyz file (the
code before the frame store, reproduced here), run at a tenth of the sizes (``--before-scale``) to
keep the run short: its bytes ratio does not depend on the scale, since every merge writes every
frame again; its rates are per frame. Each side runs on its own temporary SQLite profile.

    python -m benchmarks.bench_datasets                  # 5 to 8 minutes on 2 cores
    python -m benchmarks.bench_datasets --quick          # a tenth of every size: checks the script
"""

from __future__ import annotations

import argparse
import io
import json
import time
from pathlib import Path
from tempfile import TemporaryDirectory
from unittest import mock

import numpy as np
from aiida import load_profile
from aiida.engine import calcfunction
from aiida.manage import get_manager
from aiida.storage.sqlite_temp import SqliteTempBackend
from ase import Atoms
from ase.build import bulk
from ase.calculators.singlepoint import SinglePointCalculator
from ase.io import read, write
from tace_aiida.model import neighbours
from tace_aiida.model.data import LabelKeys, frames_to_graphs
from tace_aiida.model.frames import read_columns, read_frames, write_frames
from tace_aiida.model.graph_store import store_graphs
from tace_aiida.model.potential import ModelConfig

from tace_aiida.calculations.functions import merge_datasets
from tace_aiida.data import TrainingSetData
from tests.helpers.legacy_dataset import extxyz_dataset

CELL = bulk("Cu", "fcc", a=3.61, cubic=True) * (2, 2, 2)


def copper_frames(count: int, start: int = 0) -> list[Atoms]:
    """``count`` rattled 32-atom Cu cells with random labels (eV, eV/Å, eV/Å^3) and the loop's metadata."""
    rng = np.random.default_rng(start)
    frames = []
    for index in range(start, start + count):
        atoms = Atoms(numbers=CELL.numbers, positions=CELL.positions + rng.normal(0, 0.05, (32, 3)), cell=CELL.cell, pbc=True)
        atoms.calc = SinglePointCalculator(atoms, energy=-100 + rng.normal(), forces=rng.normal(0, 0.5, (32, 3)),
                                           stress=rng.normal(0, 0.01, 6))
        atoms.info.update(label_uuid=f"{index:08d}-0000-4000-8000-000000000000", source_frame=index)
        frames.append(atoms)
    return frames


@calcfunction
def merge_rewriting(**datasets: TrainingSetData) -> TrainingSetData:
    """The merge before the frame store: every frame of every input written again into a new extxyz file."""
    return extxyz_dataset([atoms for label in sorted(datasets) for atoms in datasets[label].get_atoms()])


def temporary_profile(name: str) -> None:
    load_profile(SqliteTempBackend.create_profile(name), allow_switch=True)


def repository_bytes() -> int:
    """Bytes of every object in the loaded profile's repository."""
    repository = get_manager().get_profile_storage().get_repository()
    total = 0
    for key in repository.list_objects():
        with repository.open(key) as handle:
            total += handle.seek(0, io.SEEK_END)
    return total


def shard_files(dataset: TrainingSetData):
    """The frame store of each shard, open."""
    for shard in dataset.shards:
        with shard.base.repository.open(shard.filename, mode="rb") as handle:
            yield handle


def campaign(initial: int, merges: int, per_merge: int, make, merge) -> dict:
    """Grow a dataset by ``merges`` merges of ``per_merge`` new frames; bytes and rates of the result."""
    dataset = make(copper_frames(initial)).store()
    merge_seconds, merged_frames = 0.0, 0
    for step in range(merges):
        batch = make(copper_frames(per_merge, start=initial + step * per_merge)).store()
        started = time.perf_counter()
        dataset = merge(previous=dataset, new=batch)
        merge_seconds += time.perf_counter() - started
        merged_frames += dataset.num_structures
    started = time.perf_counter()
    frames = dataset.get_atoms()
    read_seconds = time.perf_counter() - started
    assert len(frames) == initial + merges * per_merge
    started = time.perf_counter()
    arrays = [read_columns(handle) for handle in shard_files(dataset)] if dataset.format == "shards" else []
    columns_seconds = time.perf_counter() - started
    h5, text = io.BytesIO(), io.StringIO()
    write_frames(h5, frames)
    write(text, frames, format="extxyz")
    stored = repository_bytes()
    return {
        "frames": len(frames),
        "repository_bytes": stored,
        "final_frames_h5_bytes": len(h5.getvalue()),
        "final_frames_extxyz_bytes": len(text.getvalue().encode()),
        "read_frames_per_s": len(frames) / read_seconds,
        "read_columns_frames_per_s": sum(len(c) for c in arrays) / columns_seconds if arrays else None,
        "merge_seconds_each": merge_seconds / merges,
        "merge_frames_per_s": merged_frames / merge_seconds,
    }


def atoms_graph_seconds(paths: list[Path], r_max: float) -> tuple[float, int]:
    """(seconds, frames) to read ``paths`` as Atoms and build their graphs (``frames_to_graphs``)."""
    started, frames = time.perf_counter(), 0
    for path in paths:
        atoms_list = read_frames(path)
        frames += len(frames_to_graphs(atoms_list, str(path), [29], r_max, LabelKeys()))
    return time.perf_counter() - started, frames


def column_graph_seconds(paths: list[Path], r_max: float, cache: Path) -> tuple[float, int]:
    """(seconds, edges) to read ``paths`` as columns and build their graphs with the edge cache in ``cache``."""
    started, edges = time.perf_counter(), 0
    for path in paths:
        built = store_graphs(path, read_columns(path), [29], r_max, LabelKeys(), cache_dir=cache)
        edges += sum(graph["edge_index"].shape[1] for graph in built)
    return time.perf_counter() - started, edges


def graphs(count: int, shards: int, workdir: Path) -> dict:
    """Read ``count`` frames of 32 atoms from ``shards`` frame stores into graphs (the graphs of one
    store held at a time); extxyz and the per-Atoms graph builder with the first store's frames."""
    frames = copper_frames(count)
    shard = count // shards
    paths = [workdir / f"shard_{index}.h5" for index in range(shards)]
    text_path = workdir / "frames.extxyz"
    started = time.perf_counter()
    for index, path in enumerate(paths):
        write_frames(path, frames[index * shard : (index + 1) * shard])
    write_seconds = time.perf_counter() - started
    write(text_path, frames[:shard], format="extxyz")
    del frames
    timings = {}
    for name, reader in (("h5_columns", lambda: [read_columns(p) for p in paths]), ("h5_atoms", lambda: [read_frames(p) for p in paths]),
                         ("extxyz_atoms", lambda: read(text_path, ":"))):
        started = time.perf_counter()
        result = reader()
        timings[name] = time.perf_counter() - started
    del result
    r_max = ModelConfig.r_max
    with mock.patch.object(neighbours, "VESIN_QUANTITIES", frozenset()):  # every neighbour list from matscipy
        matscipy_seconds, before_frames = atoms_graph_seconds(paths[:1], r_max)
    vesin_seconds, _ = atoms_graph_seconds(paths[:1], r_max)
    with TemporaryDirectory() as cache:
        first_seconds, edges = column_graph_seconds(paths, r_max, Path(cache))
        cached_seconds, _ = column_graph_seconds(paths, r_max, Path(cache))
        cache_bytes = sum(path.stat().st_size for path in Path(cache).iterdir())
    return {
        "frames": count, "shard_frames": shard, "write_h5_s": write_seconds, "h5_bytes": sum(p.stat().st_size for p in paths),
        "read_h5_columns_s": timings["h5_columns"], "read_h5_atoms_s": timings["h5_atoms"],
        "read_extxyz_frames": shard, "read_extxyz_s": timings["extxyz_atoms"],
        "read_extxyz_s_per_100k": timings["extxyz_atoms"] * 100_000 / shard,
        "atoms_graph_frames": before_frames,
        "atoms_matscipy_frames_per_s": before_frames / matscipy_seconds,
        "atoms_vesin_frames_per_s": before_frames / vesin_seconds,
        "columns_first_s": first_seconds, "columns_first_frames_per_s": count / first_seconds,
        "columns_cached_s": cached_seconds, "columns_cached_frames_per_s": count / cached_seconds,
        "cache_bytes": cache_bytes, "edges_per_frame": edges / count, "r_max": r_max,
    }


def table(results: dict) -> str:
    after, before, graph = results["after"], results["before"], results["graphs"]
    per_100k = 100_000 / graph["frames"]
    rows = [
        ("final frames", f"{before['frames']:,} (1/{results['before_scale']} scale)", f"{after['frames']:,}"),
        ("repository bytes", f"{before['repository_bytes']:,}", f"{after['repository_bytes']:,}"),
        ("... / final frames stored once (same format)",
         f"{before['repository_bytes'] / before['final_frames_extxyz_bytes']:.2f}x",
         f"{after['repository_bytes'] / after['final_frames_h5_bytes']:.2f}x"),
        ("final frames stored once, bytes per frame", f"{before['final_frames_extxyz_bytes'] / before['frames']:.0f} (extxyz)",
         f"{after['final_frames_h5_bytes'] / after['frames']:.0f} (HDF5)"),
        ("get_atoms of the final set, frames/s", f"{before['read_frames_per_s']:,.0f}", f"{after['read_frames_per_s']:,.0f}"),
        ("the final set's shards as arrays (read_columns), frames/s", "-", f"{after['read_columns_frames_per_s']:,.0f}"),
        ("one merge, s", f"{before['merge_seconds_each']:.3f}", f"{after['merge_seconds_each']:.3f}"),
        ("merge, frames of the result per s", f"{before['merge_frames_per_s']:,.0f}", f"{after['merge_frames_per_s']:,.0f}"),
        (f"read {graph['frames']:,} frames of 32 atoms, s", f"{graph['read_extxyz_s_per_100k'] / per_100k:.1f} (extxyz; "
         f"{graph['read_extxyz_frames']:,} frames read, scaled)",
         f"{graph['read_h5_columns_s']:.2f} as arrays, {graph['read_h5_atoms_s']:.1f} as Atoms"),
        (f"read and build their graphs (r_max {graph['r_max']} Å, {graph['edges_per_frame']:.0f} edges/frame), frames/s",
         f"{graph['atoms_matscipy_frames_per_s']:,.0f} (Atoms, matscipy; {graph['atoms_graph_frames']:,} frames)",
         f"{graph['columns_first_frames_per_s']:,.0f} first build, {graph['columns_cached_frames_per_s']:,.0f} with cached edges "
         f"(Atoms with vesin: {graph['atoms_vesin_frames_per_s']:,.0f})"),
        (f"... the {graph['frames']:,} frames, s", f"{graph['frames'] / graph['atoms_matscipy_frames_per_s']:.0f} (extrapolated)",
         f"{graph['columns_first_s']:.1f} first, {graph['columns_cached_s']:.1f} cached"),
    ]
    lines = ["| | before (extxyz, merge rewrites) | after (HDF5 shards) |", "|---|---|---|"]
    return "\n".join(lines + [f"| {a} | {b} | {c} |" for a, b, c in rows])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="a tenth of every size")
    parser.add_argument("--before-scale", type=int, default=10, help="the before side runs at 1/N of the sizes")
    parser.add_argument("--output", type=Path, help="also write the figures and the table here (JSON)")
    args = parser.parse_args()
    shrink = 10 if args.quick else 1
    initial, merges, per_merge, graph_frames = 10_000 // shrink, 50, 200 // shrink, 100_000 // shrink
    results = {"before_scale": args.before_scale, "initial": initial, "merges": merges, "per_merge": per_merge}
    temporary_profile("after")
    results["after"] = campaign(initial, merges, per_merge, TrainingSetData, merge_datasets)
    temporary_profile("before")
    scale = args.before_scale
    results["before"] = campaign(initial // scale, merges, max(1, per_merge // scale), extxyz_dataset, merge_rewriting)
    with TemporaryDirectory() as workdir:
        results["graphs"] = graphs(graph_frames, scale, Path(workdir))
    results["table"] = table(results)
    print(results["table"])
    if args.output:
        args.output.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
