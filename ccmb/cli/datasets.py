"""``ccmb datasets``: list, inspect, verify and convert the downstream evaluation sets."""
from __future__ import annotations

import json
import shlex
import sys

import click

from .. import datasets as ds
from ..clikit import parse_key_values as _params
from ..datasets.base import DatasetError

_root = click.option("--root", required=True, type=click.Path(file_okay=False),
                     help="Folder holding the dataset in its official layout (see `ccmb datasets list`).")
_split = click.option("--split", default=None, help="Split (default: the split the paper evaluates).")
_param = click.option("-p", "--param", "params", multiple=True, metavar="KEY=VALUE",
                      help="Dataset parameter, e.g. -p num_images=5000 or -p images=DIR (repeatable).")


def _check(name: str, split, params) -> dict:
    """Name and split checked before any file is read ("did you mean", the splits the set has); the parsed
    ``-p`` parameters."""
    parsed = _params(params)
    try:
        ds.get_spec(name).check_split(split, parsed)
    except DatasetError as exc:
        raise click.ClickException(str(exc)) from None
    return parsed


@click.group("datasets")
def datasets_group() -> None:
    """Downstream datasets: ICM, IQM, ICR, IQR, Flickr30k-CNA/CN, COCO-CN, MUGE, AIC-ICC, ImageNet-CN,
    ELEVATER-CN and text-to-image sets (see docs/datasets.md).

    \b
    Examples:
      ccmb datasets info icr --root /data/ccmb
    """


@datasets_group.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def list_cmd(as_json: bool) -> None:
    """List registered datasets with task, format, default split and expected layout.

    \b
    Examples:
      ccmb datasets list --json
    """
    specs = ds.list_datasets()
    if as_json:
        click.echo(json.dumps([s.to_dict() for s in specs], ensure_ascii=False, indent=2))
        return
    for s in specs:
        extra = f"  directions: {','.join(s.directions)}" if s.task == "retrieval" else ""
        click.echo(f"{s.name}\ttask: {s.task}\tformat: {s.format}\tdefault split: {s.default_split}{extra}")
        click.echo(f"  {s.description}")
        for line in s.render_layout().splitlines():
            click.echo(f"    {line}")
        for k, v in s.params.items():
            click.echo(f"  -p {k}=...: {v}")


@datasets_group.command("info")
@click.argument("name")
@_root
@_split
@_param
@click.option("--lenient", is_flag=True, help="Skip and count malformed lines instead of failing.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def info_cmd(name: str, root: str, split: str, params, lenient: bool, as_json: bool) -> None:
    """Counts of NAME: images, texts, pairs, positives, classes (no image is opened).

    \b
    Examples:
      ccmb datasets info flickr30k-cna --root /data/ccmb --split test
    """
    parsed = _check(name, split, params)
    try:
        data = ds.load_dataset(name, root, split, lenient=lenient, **parsed)
    except DatasetError as exc:
        raise click.ClickException(str(exc)) from None
    summary = data.summary()
    if as_json:
        click.echo(json.dumps(summary, ensure_ascii=False, indent=2))
        return
    for k, v in summary.items():
        if k == "files":
            for fk, fv in v.items():
                click.echo(f"{fk} path: {fv}")
        else:
            click.echo(f"{k}: {v}")


@datasets_group.command("verify")
@click.argument("name")
@_root
@_split
@_param
@click.option("--no-decode", is_flag=True, help="Only check that images exist (do not decode them).")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@click.option("--max-lines", default=50, show_default=True, type=click.IntRange(0),
              help="Problems/warnings printed at most.")
@click.option("--workers", default=4, show_default=True, type=click.IntRange(1),
              help="Threads decoding images.")
def verify_cmd(name: str, root: str, split: str, params, no_decode: bool, as_json: bool,
               max_lines: int, workers: int) -> None:
    """Check that every line parses and every referenced image exists and decodes.

    Exits 1 when there is any problem (malformed line named by file:line, missing or undecodable image).

    \b
    Examples:
      ccmb datasets verify icr --root /data/ccmb --split val
    """
    parsed = _check(name, split, params)
    from ..datasets.verify import verify_dataset

    report = verify_dataset(name, root, split, decode=not no_decode, progress=not as_json, workers=workers,
                            **parsed)
    if as_json:
        click.echo(json.dumps(report.to_dict(), ensure_ascii=False, indent=2))
    else:
        for title, items in (("problem", report.problems), ("warning", report.warnings)):
            for msg in items[:max_lines]:
                click.echo(f"{title}: {msg}")
            if len(items) > max_lines:
                click.echo(f"... {len(items) - max_lines} more {title}s (use --json for all)")
        click.echo(f"{report.name}/{report.split}: {report.images_checked} images checked, "
                   f"{len(report.problems)} problems, {len(report.warnings)} warnings")
    if not report.ok:
        sys.exit(1)


@datasets_group.command("convert")
@click.argument("name")
@_root
@click.option("--output", required=True, type=click.Path(file_okay=False), help="Output shard folder.")
@_split
@_param
@click.option("--samples-per-shard", default=10_000, show_default=True, type=click.IntRange(1))
@click.option("--lenient", is_flag=True, help="Skip and count malformed lines instead of failing.")
def convert_cmd(name: str, root: str, output: str, split: str, params, samples_per_shard: int,
                lenient: bool) -> None:
    """Write NAME as ccmb shards (one sample per image with all its texts; see docs/datasets.md).

    \b
    Examples:
      ccmb datasets convert icr --root /data/ccmb --split train --output shards/icr_train
    """
    parsed = _check(name, split, params)
    from ..datasets.convert import convert_dataset

    try:
        manifest = convert_dataset(name, root, output, split, samples_per_shard=samples_per_shard,
                                   lenient=lenient, progress=True, command=shlex.join(sys.argv), **parsed)
    except DatasetError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"{manifest['dataset']}/{manifest['split']}: {manifest['total_samples']} samples in "
               f"{len(manifest['shards'])} shards, {manifest['failed_images']} failed images -> {output}")
