"""Does compiling the batched ensemble pass bring 4 members to 2x one member on a CPU? Energy and forces per call,
eager and compiled by AOTInductor, for one member and for 4 members stacked into one pass.

The eager stacked pass costs 3.3-4.3x one member (``bench_ensemble.py``), because nearly all of a step is work on
each member's own features. A compiled program fuses the elementwise operators; this measures whether that leaves
less per-member work. Each configuration is one traced function of a structure's graph inputs that returns the
energies (eV) and forces (eV/Å, by autograd inside the program), as ``tace-export --compile`` writes a model:
``make_fx`` with symbolic sizes, ``torch.export`` with the number of atoms and edges dynamic, AOTInductor. The
stacked one runs the members' weights stacked on a leading axis (:class:`~tace_aiida.model.ensemble.StackedEnsemble`)
with one copy of the positions per member, so that one backward pass gives every member's forces. "4 one by one"
calls the first member's compiled program four times (the cost does not depend on the weights).

Members are random-weight potentials of the default architecture (as in ``bench_ensemble.py``) for a 27-atom 3BPA
molecule and a rattled 216-atom fcc Cu cell; ``--frames`` rattled copies of each are evaluated in turn (so the
number of edges changes from call to call, as in MD), configurations alternate over ``--rounds`` rounds and the best
round counts. glibc keeps freed memory for reuse, as ``tace-md`` runs (:func:`~tace_aiida.model.calculator.keep_freed_memory`).
Compiling takes about a minute per program.

    python -m benchmarks.bench_compiled_ensemble                   # about 8 minutes on one core
    python -m benchmarks.bench_compiled_ensemble --dtype float32 --output benchmarks/results/bench_compiled_ensemble.json
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
from ase import Atoms
from tace_aiida.model.calculator import keep_freed_memory
from tace_aiida.model.checkpoint import load_model
from tace_aiida.model.ensemble import StackedEnsemble
from tace_aiida.model.export import NodeEnergies, condition_inputs, graph_inputs, tracing_inputs
from tace_aiida.model.exported_program import (
    TRACING_POSITIONS,
    graph_input_shapes,
    trace_program,
    write_compiled_program,
)
from tace_aiida.model.potential import CartesianTensorPotential
from torch.func import functional_call

from benchmarks.bench_ensemble import MEMBERS, member_checkpoints, systems

Tensor = torch.Tensor


class EnergyForces(torch.nn.Module):
    """Energies ``[members]`` (eV) and forces ``[members, n_atoms, 3]`` (eV/Å) of one structure from its graph
    inputs, for one potential or for several with their weights stacked (``members`` > 1)."""

    def __init__(self, models: list[CartesianTensorPotential]) -> None:
        super().__init__()
        self.members = len(models)
        self.node_energies = NodeEnergies(models[0])
        self.stacked = ({f"model.{name}": value for name, value in StackedEnsemble(models).stacked.items()}
                        if self.members > 1 else None)

    def forward(self, positions: Tensor, *graph: Tensor) -> tuple[Tensor, Tensor]:
        positions = positions.detach().expand(self.members, *positions.shape).contiguous().requires_grad_(True)
        if self.stacked is None:
            node_energies = self.node_energies(positions[0], *graph)[0].unsqueeze(0)
        else:
            node_energies = functional_call(self.node_energies, self.stacked, (positions, *graph))[0]
        energies = node_energies.sum(-1)
        (gradient,) = torch.autograd.grad([energies.sum()], [positions])
        return energies.detach(), -gradient.detach()


def compiled(function: EnergyForces, path: Path) -> tuple[Callable, float]:
    """``function`` compiled by AOTInductor into ``path``, traced as ``tace-export`` traces a model, and the seconds
    it took."""
    start = time.perf_counter()
    inputs = tracing_inputs(function.node_energies.model, TRACING_POSITIONS)
    write_compiled_program(trace_program(function, inputs, graph_input_shapes()), inputs, path, {})
    return torch._inductor.aoti_load_package(str(path)), time.perf_counter() - start


def rattled_inputs(atoms: Atoms, frames: int, model: CartesianTensorPotential) -> list[tuple[Tensor, ...]]:
    """Graph and condition inputs of ``frames`` copies of ``atoms`` rattled by 0.05 Å, in the model's dtype."""
    dtype = next(model.parameters()).dtype
    inputs = []
    for seed in range(frames):
        frame = atoms.copy()
        frame.rattle(0.05, seed=seed)
        inputs.append(graph_inputs(frame, model.config.atomic_numbers, model.config.r_max, dtype)
                      + condition_inputs(frame, dtype))
    return inputs


def repeated(function: Callable, times: int) -> Callable:
    """``function`` called ``times`` times on the same inputs."""
    return lambda *inputs: [function(*inputs) for _ in range(times)]


def milliseconds_per_call(function: Callable, inputs: list[tuple[Tensor, ...]], calls: int) -> float:
    """Mean wall-clock milliseconds of ``function`` over ``calls`` calls cycling through ``inputs``, after a warm-up."""
    for graph in inputs:
        function(*graph)
    start = time.perf_counter()
    for index in range(calls):
        function(*inputs[index % len(inputs)])
    return (time.perf_counter() - start) / calls * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    parser.add_argument("--dtype", choices=["float32", "float64"], default="float64")
    parser.add_argument("--frames", type=int, default=5, help="rattled copies of each system evaluated in turn")
    parser.add_argument("--calls", type=int, nargs=2, default=[40, 10], metavar=("MOLECULE", "CELL"),
                        help="timed calls per configuration and round for the molecule and the cell")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--output", type=Path, help="JSON file the run is appended to")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    keep_freed_memory()  # as tace-md runs: glibc keeps the large per-edge tensors' memory for the next call
    dtype = getattr(torch, args.dtype)
    rows = {}
    with tempfile.TemporaryDirectory() as folder:
        for (name, atoms), calls in zip(systems().items(), args.calls, strict=True):
            workdir = Path(folder) / str(len(rows))
            workdir.mkdir()
            models = [load_model(path)[0].eval() for path in member_checkpoints(atoms, workdir, dtype)]
            for parameter in (p for model in models for p in model.parameters()):
                parameter.requires_grad_(False)
            one, stacked = EnergyForces(models[:1]), EnergyForces(models)
            one_compiled, one_seconds = compiled(one, workdir / "one.pt2")
            stacked_compiled, stacked_seconds = compiled(stacked, workdir / "stacked.pt2")
            inputs = rattled_inputs(atoms, args.frames, models[0])
            eager_forces = stacked(*inputs[0])[1]
            difference = max(float((stacked_compiled(*inputs[0])[1] - eager_forces).abs().max()),
                             float((one_compiled(*inputs[0])[1][0] - eager_forces[0]).abs().max()))
            configurations = {
                "1 eager": one, "4 stacked eager": stacked, "1 compiled": one_compiled,
                "4 one by one compiled": repeated(one_compiled, MEMBERS),
                "4 stacked compiled": stacked_compiled,
            }
            best = {key: float("inf") for key in configurations}
            for _ in range(args.rounds):
                for key, function in configurations.items():
                    best[key] = min(best[key], milliseconds_per_call(function, inputs, calls))
            rows[name] = {"ms_per_call": best, "compile_seconds": {"1": one_seconds, "4 stacked": stacked_seconds},
                          "max_force_difference_compiled_vs_eager": difference}
            print(f"{name}: {best}, compiled in {one_seconds:.0f} and {stacked_seconds:.0f} s, "
                  f"compiled - eager forces {difference:.1e} eV/Å", flush=True)
    print(f"\nEnergy and forces, ms per call, {args.dtype}, {args.threads} thread(s), best of {args.rounds} rounds")
    print(f"{'system':30} {'1 eager':>8} {'4 stacked':>10} {'1 compiled':>11} {'4 one by one':>13} {'4 stacked':>10} "
          f"{'cost eager':>11} {'cost compiled':>14} {'compiled 4 / eager 1':>21}")
    for name, row in rows.items():
        ms = row["ms_per_call"]
        print(f"{name:30} {ms['1 eager']:8.2f} {ms['4 stacked eager']:10.2f} {ms['1 compiled']:11.2f} "
              f"{ms['4 one by one compiled']:13.2f} {ms['4 stacked compiled']:10.2f} "
              f"{ms['4 stacked eager'] / ms['1 eager']:10.2f}x {ms['4 stacked compiled'] / ms['1 compiled']:13.2f}x "
              f"{ms['4 stacked compiled'] / ms['1 eager']:20.2f}x")
    print("cost = 4 stacked members relative to 1 member, both eager or both compiled (the issue's goal: at most 2x); "
          "the columns after '1 compiled' are compiled programs")
    if args.output:
        runs = json.loads(args.output.read_text()) if args.output.exists() else []
        runs.append({"settings": {**{k: v for k, v in vars(args).items() if k != "output"}, "torch": torch.__version__,
                                  "machine": platform.machine(), "processor": platform.processor()},
                     "systems": rows})
        args.output.write_text(json.dumps(runs, indent=1) + "\n")


if __name__ == "__main__":
    main()
