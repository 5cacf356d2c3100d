"""``verdi data tace.dataset``: inspect and export training sets (entry point group ``aiida.cmdline.data``)."""

from __future__ import annotations

import click
import numpy as np
from aiida.cmdline.commands.cmd_data.cmd_export import data_export
from aiida.cmdline.groups import VerdiCommandGroup
from aiida.cmdline.params import arguments, options, types
from aiida.cmdline.utils import decorators, echo

DATASET = types.DataParamType(sub_classes=("aiida.data:tace.dataset",))


@click.group("tace.dataset", cls=VerdiCommandGroup)
def dataset():
    """Inspect and export ``tace.dataset`` training sets."""


@dataset.command("show")
@arguments.DATUM(type=DATASET)
@decorators.with_dbenv()
def dataset_show(datum):
    """Show what a training set holds: structures, atoms, elements, labels and where its frames are."""
    rows = {
        "structures": datum.num_structures,
        "atoms": datum.base.attributes.get("num_atoms"),
        "elements": " ".join(datum.elements),
        "labels": ", ".join(f"{key} {count}" for key, count in datum.label_counts.items()),
        "storage": datum.format,
    }
    forces = force_statistics(datum.get_atoms())
    if forces:
        rows["forces"] = forces
    if datum.format == "shards":
        rows["shards"] = len(datum.shard_uuids)
    for key, value in rows.items():
        echo.echo(f"{key}: {value}")


def force_statistics(frames: list) -> str | None:
    """``RMS 0.43 eV/Å, largest 2.10 eV/Å, 1 of 5 structures without any force``: the force labels of ``frames`` in
    one line (None when none has forces), so that a set of ideal crystals, whose forces all vanish, shows."""
    from tace_aiida.model.frames import NO_FORCE, frame_labels

    labelled = [np.asarray(labels["forces"], dtype=float) for labels in map(frame_labels, frames) if "forces" in labels]
    if not labelled:
        return None
    components = np.concatenate([forces.ravel() for forces in labelled])
    without = sum(float(np.abs(forces).max(initial=0.0)) < NO_FORCE for forces in labelled)
    return (f"RMS {np.sqrt(np.mean(components ** 2)):.3g} eV/Å, largest {np.abs(components).max():.3g} eV/Å, "
            f"{without} of {len(labelled)} structures without any force")


@dataset.command("import")
@click.argument("files", nargs=-1, required=True, type=click.Path(exists=True, dir_okay=False))
@click.option("--index", default=":", show_default=True, help="Frames of each file to take (ase.io.read's index).")
@click.option("--energy-key", default="energy", show_default=True, help="Info key of the energy (eV).")
@click.option("--forces-key", default="forces", show_default=True, help="Per-atom array of the forces (eV/Å).")
@click.option("--stress-key", default="stress", show_default=True,
              help="Info key of the stress (eV/Å^3, 3x3 or Voigt order); optional per frame.")
@click.option("--virial-key", default="virial", show_default=True,
              help="Info key of the virial (eV), read where a frame has no stress: stress = -virial / volume.")
@decorators.with_dbenv()
def dataset_import(files, index, energy_key, forces_key, stress_key, virial_key):
    """Store labelled structures from FILES (extxyz or any format ASE reads) as one training set.

    Every frame needs an energy and forces, in eV and eV/Å; a stress is kept where present. Start a loop from it with
    `tace-aiida learn --dataset PK`: the loop adds its own labels to these, so they should come from the same level
    of theory as the loop's labeller.
    """
    from .data.dataset import TrainingSetData
    from .labelled_files import read_labelled

    try:
        frames = [atoms for path in files for atoms in read_labelled(path, index, energy_key, forces_key, stress_key,
                                                                   virial_key)]
        node = TrainingSetData(frames).store()
    except ValueError as error:
        echo.echo_critical(str(error))
    labels = ", ".join(f"{key} {count}" for key, count in node.label_counts.items())
    echo.echo_success(f"stored TrainingSetData<{node.pk}>: {node.num_structures} structures of "
                      f"{' '.join(node.elements)} from {len(files)} file(s); labels: {labels}")


@dataset.command("export")
@arguments.DATUM(type=DATASET)
@options.EXPORT_FORMAT(type=click.Choice(["extxyz"]), default="extxyz")
@click.option("-o", "--output", type=click.Path(dir_okay=False), help="Write to this file instead of printing.")
@options.FORCE(help="Overwrite the output file.")
@decorators.with_dbenv()
def dataset_export(datum, fmt, output, force):
    """Export the frames of a training set (labels in eV, eV/Å, eV/Å^3) as extxyz."""
    data_export(datum, output, fmt, overwrite=force)
