"""``ccmb shards``: inspect a shard set (finalize its manifest, list it); a local folder or an fsspec URL."""
from __future__ import annotations

import json
import shlex
import sys

import click

from .. import shards as fmt
from .. import storage
from ..clikit import input_errors_as_click
from .storage_args import Location


@click.group("shards")
def shards_group() -> None:
    """Inspect and finalize shard sets in the ccmb format (see docs/formats.md).

    \b
    Examples:
      ccmb shards ls shards/
    """


@shards_group.command("finalize")
@click.argument("shard_dir", type=Location(exists=True, file_okay=False))
@input_errors_as_click
def finalize_cmd(shard_dir: str) -> None:
    """Write sizes.json and manifest.json for the NNNNN.tar files in SHARD_DIR.

    \b
    Examples:
      ccmb shards finalize shards/
    """
    manifest = fmt.finalize_shard_set(shard_dir, command=shlex.join(sys.argv))
    click.echo(f"{len(manifest['shards'])} shards, {manifest['total_samples']} samples")


@shards_group.command("ls")
@click.argument("shard_dir", type=Location(exists=True))
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@input_errors_as_click
def ls_cmd(shard_dir: str, as_json: bool) -> None:
    """List the shards of SHARD_DIR with their sample counts.

    \b
    Examples:
      ccmb shards ls shards/ --json
    """
    rows = {storage.name(p): fmt.count_tar_samples(p) for p in fmt.list_shards(shard_dir)}
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    for name, n in rows.items():
        click.echo(f"{name}\t{n}")
    click.echo(f"total\t{sum(rows.values())}")
