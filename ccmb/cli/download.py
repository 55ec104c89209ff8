"""``ccmb download zero|urls``: URL lists -> a ccmb shard set, through img2dataset (see docs/corpus.md)."""
from __future__ import annotations

import shlex
import sys
from typing import Any, Callable, Optional, Tuple

import click

RESIZE_MODES = ("no", "keep_ratio", "keep_ratio_largest", "center_crop", "border")


def _common_options(fn: Callable) -> Callable:
    """Options shared by ``zero`` and ``urls`` (they run the same code)."""
    options = [
        click.option("--input", "-i", "inputs", multiple=True, required=True,
                     help="Input file, folder or glob (JSON lines, JSON array, CSV, TSV, parquet; .gz ok). "
                          "Repeat for several."),
        click.option("--output", "-o", "output", required=True, type=click.Path(file_okay=False),
                     help="Output folder: the shard set (NNNNN.tar/.parquet/_stats.json, sizes.json, manifest.json)."),
        click.option("--processes", type=int, default=None, show_default="CPU count",
                     help="Download processes (multiprocessing) or local[N] cores (pyspark)."),
        click.option("--threads", type=int, default=64, show_default=True, help="Download threads per process."),
        click.option("--image-size", type=int, default=256, show_default=True, help="Target image size (pixels)."),
        click.option("--resize-mode", type=click.Choice(RESIZE_MODES), default="keep_ratio", show_default=True,
                     help="keep_ratio: shorter side = image-size, no crop, no padding."),
        click.option("--encode-quality", type=int, default=95, show_default=True, help="JPEG quality."),
        click.option("--timeout", type=int, default=10, show_default=True,
                     help="Wall-clock seconds per HTTP request: connect, headers, body and redirects together "
                          "(a slower request fails as 'deadline exceeded')."),
        click.option("--max-bytes", type=int, default=64 * 1024 * 1024, show_default=True,
                     help="Largest response body accepted, checked on Content-Length and while streaming "
                          "('response larger than --max-bytes')."),
        click.option("--deny-private", is_flag=True,
                     help="Refuse loopback, private, link-local, multicast and reserved addresses, also after a "
                          "redirect ('private address refused'); recommended on cloud machines (metadata "
                          "endpoints, internal services)."),
        click.option("--retries", type=int, default=1, show_default=True,
                     help="Extra tries per URL inside the same run."),
        click.option("--samples-per-shard", type=int, default=10_000, show_default=True, help="Input rows per shard."),
        click.option("--distributor", type=click.Choice(["multiprocessing", "pyspark"]), default="multiprocessing",
                     show_default=True, help="pyspark: img2dataset's Spark distributor (pip install 'ccmb[spark]')."),
        click.option("--spark-master", default=None,
                     help="Spark master for --distributor pyspark (default $CCMB_SPARK_MASTER or local[N])."),
        click.option("--limit", type=int, default=None, help="Only the first N input rows (for trials)."),
        click.option("--retry-failed", is_flag=True,
                     help="After resuming, download the failed rows of finished shards again and merge the "
                          "successes under their original keys."),
        click.option("--allow-file-urls", is_flag=True, help="Also accept file:// URLs (refused by default)."),
        click.option("--strict", is_flag=True, help="Stop at the first malformed record or non-UTF-8 line "
                                                    "(default: count it as a failed row and go on)."),
        click.option("--overwrite", is_flag=True, help="Delete an existing shard set in OUTPUT first."),
        click.option("--user-agent-token", default=None,
                     help="Token added to the user agent (default ccmb/VERSION); add a contact URL for large "
                          "crawls, e.g. 'ccmb/0.1 (+https://example.org/crawler)'."),
    ]
    for opt in reversed(options):
        fn = opt(fn)
    return fn


def _run(mode: str, inputs: Tuple[str, ...], output: str, retry_failed: bool, **kwargs: Any) -> None:
    from ..corpus.download import USER_AGENT_TOKEN, DownloadError, download
    from ..corpus.ingest import InputError

    kwargs["user_agent_token"] = kwargs.get("user_agent_token") or USER_AGENT_TOKEN
    try:
        summary = download(list(inputs), output, mode=mode, retry_failed_rows=retry_failed,
                           command=shlex.join(["ccmb"] + sys.argv[1:]), **kwargs)
    except (InputError, DownloadError, ValueError, FileNotFoundError) as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(summary.report())  # the library logs a loud warning when more than 30% failed
    if not summary.complete:
        raise click.ClickException("the shard set is incomplete: run the same command again to resume")


@click.group("download")
def download_group() -> None:
    """Download image URL lists into a ccmb shard set (img2dataset; resumable).

    Run the same command again to resume after an interruption: finished shards are kept, unfinished
    ones are removed and downloaded again. Only http(s) URLs are fetched (redirects too); every input
    row ends up in the shards' parquet files as a success or a failure with its reason. A full disk
    stops the run with one error line; free space and run the same command again.

    \b
    Examples:
      ccmb download zero -i zero_2m/ -o dl/ --processes 16 --threads 64
    """


@download_group.command("zero")
@_common_options
@click.option("--caption-field", type=click.Choice(["title", "content", "query", "keywords"]), default="title",
              show_default=True, help="Zero text used as the primary caption ({key}.txt).")
def zero_cmd(inputs: Tuple[str, ...], output: str, caption_field: str, retry_failed: bool, **kwargs: Any) -> None:
    """Download the Zero corpus (JSON records with Url, Title, Content, Keywords, ImageKey, ImageUrl,
    ImageQuery; keys case-insensitive).

    \b
    Example:
      ccmb download zero -i zero_2m/ -o shards/zero_2m --processes 16 --threads 64
    """
    _run("zero", inputs, output, retry_failed, caption_field=caption_field, **kwargs)


@download_group.command("urls")
@_common_options
@click.option("--url-col", default="url", show_default=True, help="Column with the image URL (case-insensitive).")
@click.option("--caption-col", default="caption", show_default=True, help="Column with the caption.")
@click.option("--id-col", default=None, help="Column with a unique id (stored as image_key; duplicates refused).")
def urls_cmd(inputs: Tuple[str, ...], output: str, url_col: str, caption_col: Optional[str], id_col: Optional[str],
             retry_failed: bool, **kwargs: Any) -> None:
    """Download any URL list (Wukong CSVs, LAION-style parquet ...): other columns are kept.

    \b
    Example:
      ccmb download urls -i wukong/*.csv -o shards/wukong --url-col url --caption-col caption
    """
    _run("urls", inputs, output, retry_failed, url_col=url_col, caption_col=caption_col, id_col=id_col, **kwargs)
