"""``verdi data tace.dataset``: inspect and export training sets (entry point group ``aiida.cmdline.data``)."""

from __future__ import annotations

import click
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
    if datum.format == "shards":
        rows["shards"] = len(datum.shard_uuids)
    echo.echo_dictionary(rows, fmt="yaml", sort_keys=False)


@dataset.command("export")
@arguments.DATUM(type=DATASET)
@options.EXPORT_FORMAT(type=click.Choice(["extxyz"]), default="extxyz")
@click.option("-o", "--output", type=click.Path(dir_okay=False), help="Write to this file instead of printing.")
@options.FORCE(help="Overwrite the output file.")
@decorators.with_dbenv()
def dataset_export(datum, fmt, output, force):
    """Export the frames of a training set (labels in eV, eV/Å, eV/Å^3) as extxyz."""
    data_export(datum, output, fmt, overwrite=force)
