"""The ``ccmb-bench`` command line (a click group; sub-commands register here)."""
from __future__ import annotations

import click

from ccmb import __version__
from ccmb.cli.common import setup_logging


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="ccmb-bench")
@click.option("-v", "--verbose", count=True, help="More logging (-v info, -vv debug).")
def main(verbose: int) -> None:
    """ccmb-bench: evaluate models on the CCMB downstream tasks and publish leaderboards."""
    setup_logging(verbose)
