"""The ``ccmb`` command line: a click group whose sub-commands live in sibling modules.

CLI modules are composition roots: they may wire ``ccmb``, ``models`` and ``ccmb_bench`` together,
while library modules keep the one-way flow ccmb -> models -> ccmb_bench.
"""
from __future__ import annotations

import click

from .. import __version__
from ..clikit import setup_logging


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="ccmb")
@click.option("-v", "--verbose", count=True, help="More logging (-v info, -vv debug).")
def main(verbose: int) -> None:
    """ccmb: the CCMB data toolkit (Zero corpus, downstream datasets, shards, training)."""
    setup_logging(verbose)


# Sub-commands: one module each; register them here.
from .shards import shards_group  # noqa: E402

main.add_command(shards_group)
from .datasets import datasets_group  # noqa: E402
main.add_command(datasets_group)
from .train import train_group  # noqa: E402
main.add_command(train_group)
from .download import download_group  # noqa: E402
main.add_command(download_group)
from .corpus import build_shards_cmd, dedup_cmd, filter_cmd, stats_cmd, verify_cmd  # noqa: E402

main.add_command(filter_cmd)
main.add_command(dedup_cmd)
main.add_command(build_shards_cmd)
main.add_command(verify_cmd)
main.add_command(stats_cmd)
from .demo import demo_cmd  # noqa: E402

main.add_command(demo_cmd)
