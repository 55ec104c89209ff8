"""``ccmb fetch``: official checkpoints and public evaluation sets by name, into ``$CCMB_HOME``."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import click

from ccmb.clikit import input_errors_as_click


def _common(func):
    func = click.option("--allow-file-urls", is_flag=True,
                        help="Also accept file:// sources (tests, local mirrors); only http(s) otherwise.")(func)
    func = click.option("--offline", is_flag=True,
                        help="Use only what is cached (same as CCMB_OFFLINE=1); never touch the network.")(func)
    return func


def _run(fn, offline: bool):
    """Run a fetch with its progress lines on stderr; every failure is one ``Error:`` message."""
    from ccmb.fetch import FetchError, UnsafeArchiveError, VerificationError, offline as offline_env

    if offline or offline_env():  # the hub client too: nothing downloaded, no retries spent
        from ccmb_bench.precheck import set_offline

        set_offline(True)
    try:
        return fn(lambda line: click.echo(line, err=True))
    except (FetchError, VerificationError, UnsafeArchiveError, OSError) as exc:
        raise click.ClickException(str(exc)) from exc


@click.group("fetch")
def fetch_group() -> None:
    """Download official weights and public evaluation sets by name (resumable, verified, cached under
    $CCMB_HOME, default ~/.cache/ccmb). Extra mirrors: CCMB_MIRRORS or $CCMB_HOME/mirrors.txt.

    \b
    Examples:
      ccmb fetch model r2d2-vitb16
      ccmb fetch dataset muge --root /data/ccmb
    """


@fetch_group.command("model")
@click.argument("name")
@click.option("--dir", "folder", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Target folder (default: $CCMB_HOME/models/NAME, where ccmb-bench looks).")
@_common
@input_errors_as_click
def model_cmd(name: str, folder: Optional[Path], allow_file_urls: bool, offline: bool) -> None:
    """Fetch (or verify the cached copy of) the weights and tokenizer of model NAME.

    \b
    Examples:
      ccmb fetch model r2d2-vitl14
      ccmb fetch model r2d2-vitb16-icr --dir models/icr
    """
    from ccmb_bench.precheck import registered_names
    from models import hub

    art = hub.artifact(name)  # an unknown name: "did you mean", before anything is tried
    where = Path(folder) if folder else hub.model_dir(name)
    click.echo(f"fetching model {name} ({art.description or 'no description'}): {len(art.files)} files into "
               f"{where}", err=True)
    res = _run(lambda report: hub.fetch_weights(name, folder, allow_file=allow_file_urls, offline=offline or None,
                                                report=report), offline)
    for p in res.files:
        state = "downloaded" if p.name in res.downloaded else "cached, verified"
        click.echo(f"{p}  ({state})")
    if where == hub.model_dir(name) and name in registered_names():
        click.echo(f"ready: ccmb-bench run --model {name} ...")
    else:
        config = hub.entry(name).get("config")
        click.echo(f"ready: ccmb-bench run --model {config or name} --checkpoint {where} ...")


@fetch_group.command("dataset")
@click.argument("name")
@click.option("--root", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Data root to unpack into (default: $CCMB_HOME/datasets); pass the same --root to ccmb-bench.")
@click.option("--remove-archive", is_flag=True, help="Delete the downloaded archive after unpacking.")
@_common
@input_errors_as_click
def dataset_cmd(name: str, root: Optional[Path], remove_archive: bool, allow_file_urls: bool,
                offline: bool) -> None:
    """Fetch dataset NAME into the data root, or print the manual steps for sets behind a login/request.

    \b
    Examples:
      ccmb fetch dataset muge --root /data/ccmb
    """
    from ccmb.datasets import sources
    from ccmb.fetch import datasets_dir

    root = root or datasets_dir()
    sources.entry(name)  # an unknown name: "did you mean", before anything is tried
    if not sources.is_fetchable(name):
        raise click.ClickException(f"{name} cannot be fetched automatically: {sources.manual_steps(name, root)}")
    click.echo(f"fetching dataset {name} into {root}", err=True)
    res = _run(lambda report: sources.fetch_dataset(name, root, allow_file=allow_file_urls, offline=offline or None,
                                                    keep_archives=not remove_archive, report=report), offline)
    for p in res.unpacked:
        click.echo(f"{p}  (unpacked)")
    if not res.unpacked:
        click.echo(f"{root}: already in place")
    click.echo(f"check: {sources.verify_command(name, root)}")


@fetch_group.command("list")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def list_cmd(as_json: bool) -> None:
    """List what can be fetched (models, datasets), with sources and manual steps.

    \b
    Examples:
      ccmb fetch list --json
    """
    from ccmb.datasets import sources
    from models import hub

    data = {"models": hub.describe(), "datasets": sources.describe()}
    if as_json:
        click.echo(json.dumps(data, ensure_ascii=False, indent=2))
        return
    click.echo("models:")
    for r in data["models"]:
        srcs = ", ".join(next(iter(s)) for s in r["files"][0]["sources"])
        click.echo(f"  {r['name']:22s} {r['description']}  [{srcs}]")
    click.echo("datasets:")
    for r in data["datasets"]:
        how = "fetch" if r["fetchable"] else f"manual: {r['manual'].get('url', '')}"
        click.echo(f"  {r['name']:22s} {r['description']}  [{how}]")
