"""The ``ccmb`` command line: a click group whose sub-commands live in sibling modules.

CLI modules are composition roots: they may wire ``ccmb``, ``models`` and ``ccmb_bench`` together,
while library modules keep the one-way flow ccmb -> models -> ccmb_bench. Helpers shared with
``ccmb-bench`` live in :mod:`ccmb.clikit`, never here (importing this package loads every command).
"""
from __future__ import annotations

import importlib

import click

from .. import __version__
from ..clikit import finish_help, setup_logging


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="ccmb")
@click.option("-v", "--verbose", count=True, help="More logging (-v info, -vv debug).")
def main(verbose: int) -> None:
    """ccmb: the CCMB data toolkit (Zero corpus, downstream datasets, shards, training).

    \b
    Examples:
      ccmb demo --workdir demo_out
      ccmb datasets list
    """
    setup_logging(verbose)


#: Sub-commands as ``"module:attribute"`` of this package (``ccmb --help`` lists them by name).
#: Register a new command with one line here. Keep heavy imports (torch, pyspark) inside the command
#: functions: ``ccmb --help`` imports every module listed.
COMMANDS = (
    "download:download_group",
    "corpus:filter_cmd",
    "corpus:dedup_cmd",
    "corpus:decontaminate_cmd",
    "corpus:build_shards_cmd",
    "corpus:verify_cmd",
    "corpus:stats_cmd",
    "score:score_cmd",
    "shards:shards_group",
    "datasets:datasets_group",
    "fetch:fetch_group",
    "train:train_group",
    "demo:demo_cmd",
)

for _spec in COMMANDS:
    _module, _, _attr = _spec.partition(":")
    main.add_command(getattr(importlib.import_module(f".{_module}", __name__), _attr))
finish_help(main)  # every command's --help ends with its examples
