"""``ccmb download zero|urls``: URL lists -> a ccmb shard set, through img2dataset (see docs/corpus.md)."""
from __future__ import annotations

import shlex
import sys
from typing import Any, Callable, Optional, Tuple

import click
from .storage_args import Location

RESIZE_MODES = ("no", "keep_ratio", "keep_ratio_largest", "center_crop", "border")


def _common_options(fn: Callable) -> Callable:
    """Options shared by ``zero`` and ``urls`` (they run the same code)."""
    seconds = click.FloatRange(min=0)
    options = [
        click.option("--input", "-i", "inputs", multiple=True, required=True,
                     help="Input file, folder or glob (JSON lines, JSON array, CSV, TSV, parquet; .gz ok). "
                          "Repeat for several."),
        click.option("--output", "-o", "output", required=True, type=Location(),
                     help="Output folder: a new or empty folder, or an earlier download to resume (the shard set: "
                          "NNNNN.tar/.parquet/_stats.json, sizes.json, manifest.json)."),
        click.option("--processes", type=click.IntRange(1, 1024), default=None, show_default="CPU count",
                     help="Download processes (multiprocessing) or local[N] cores (pyspark)."),
        click.option("--threads", type=click.IntRange(1, 1024), default=64, show_default=True,
                     help="Download threads per process."),
        click.option("--image-size", type=click.IntRange(16, 16384), default=256, show_default=True,
                     help="Target image size (pixels)."),
        click.option("--resize-mode", type=click.Choice(RESIZE_MODES), default="keep_ratio", show_default=True,
                     help="keep_ratio: shorter side = image-size, no crop, no padding."),
        click.option("--encode-quality", type=click.IntRange(1, 100), default=95, show_default=True,
                     help="JPEG quality."),
        click.option("--decode-budget-mb", type=click.IntRange(min=16), default=1024, show_default=True,
                     help="Most memory decoding one image may take, counting its channels and bit depth; a larger "
                          "image fails as 'image over the decode budget'."),
        click.option("--timeout", type=click.FloatRange(min=0, min_open=True, max=3600), default=10,
                     show_default=True,
                     help="Wall-clock seconds per HTTP request: DNS, connect, headers, body and redirects together "
                          "(a slower request fails as 'deadline exceeded')."),
        click.option("--max-bytes", type=click.IntRange(min=1), default=64 * 1024 * 1024, show_default=True,
                     help="Largest response body accepted, checked on Content-Length and while streaming "
                          "('response larger than --max-bytes')."),
        click.option("--allow-private", is_flag=True,
                     help="Also connect to loopback, private and other special-purpose addresses (refused by "
                          "default, at every redirect and after DNS: cloud metadata services, internal hosts). "
                          "For local trials only."),
        click.option("--deny-private", is_flag=True, hidden=True,
                     help="The default (kept for old command lines)."),
        click.option("--contact", default=None, metavar="URL|EMAIL",
                     help="How a site's operator reaches you: put in the user agent "
                          "('ccmb/VERSION (+CONTACT; compatible; img2dataset)') and the run's record. Recommended."),
        click.option("--ignore-robots", is_flag=True,
                     help="Do not read robots.txt (warns; recorded in the run's state and summary)."),
        click.option("--robots-retry", type=seconds, default=600, show_default=True,
                     help="Seconds a site whose robots.txt is unreachable (5xx, 429, no answer) stays disallowed "
                          "before robots.txt is fetched again."),
        click.option("--host-concurrency", type=click.IntRange(1, 1024), default=4, show_default=True,
                     help="Most requests in flight to one host (1 when robots.txt sets a Crawl-delay)."),
        click.option("--host-rate", type=click.FloatRange(min=0, min_open=True), default=10.0, show_default=True,
                     help="Most request starts per second to one host (Crawl-delay lowers it)."),
        click.option("--host-groups", type=click.IntRange(0, 4096), default=None,
                     show_default="one per worker process (Spark: per core)",
                     help="Group the input by host hash into N groups, each downloaded by one worker at a time, so "
                          "the per-host limits hold for the whole run (also on Spark); 0: no grouping (the limits "
                          "then hold per worker process)."),
        click.option("--retries", type=click.IntRange(0, 20), default=1, show_default=True,
                     help="Extra tries per URL after a 429/503 (after Retry-After), 5xx, timeout or connection error."),
        click.option("--max-retry-after", type=seconds, default=120, show_default=True,
                     help="Longest Retry-After waited for; a host asking for longer is not asked again in this run "
                          "(its rows fail as host_paced_out)."),
        click.option("--backoff-base", type=seconds, default=1.0, show_default=True,
                     help="First backoff after a failure without Retry-After (doubles per failure, with jitter, "
                          "at most 60 s)."),
        click.option("--host-fail-after", type=click.IntRange(min=1), default=10, show_default=True,
                     help="Failures in a row after which a host is paused (--host-pause); failing again after the "
                          "pause, its remaining rows fail as host_paced_out."),
        click.option("--host-pause", type=seconds, default=120, show_default=True,
                     help="Seconds a failing host is paused."),
        click.option("--blocklist", multiple=True, type=click.Path(exists=True, dir_okay=False),
                     help="File of MD5/SHA-256 image hashes, URLs and domains (one per line) never stored: URLs and "
                          "domains are not requested, hashes are checked on the downloaded and stored bytes. "
                          "Repeatable."),
        click.option("--samples-per-shard", type=click.IntRange(2, 10_000_000), default=10_000, show_default=True,
                     help="Input rows per shard."),
        click.option("--distributor", type=click.Choice(["multiprocessing", "pyspark"]), default="multiprocessing",
                     show_default=True, help="pyspark: one Spark task per host group (pip install 'ccmb[spark]')."),
        click.option("--spark-master", default=None,
                     help="Spark master for --distributor pyspark (default $CCMB_SPARK_MASTER or local[N])."),
        click.option("--limit", type=click.IntRange(min=1), default=None, help="Only the first N input rows (for trials)."),
        click.option("--retry-failed", is_flag=True,
                     help="After resuming, download the failed rows of finished shards again and merge the "
                          "successes under their original keys (refusals are not retried)."),
        click.option("--allow-file-urls", is_flag=True, help="Also accept file:// URLs (refused by default)."),
        click.option("--strict", is_flag=True, help="Stop at the first malformed record or non-UTF-8 line "
                                                    "(default: count it as a failed row and go on)."),
        click.option("--overwrite", is_flag=True, help="Empty an earlier download in OUTPUT first."),
    ]
    for opt in reversed(options):
        fn = opt(fn)
    return fn


def _run(mode: str, inputs: Tuple[str, ...], output: str, retry_failed: bool, **kwargs: Any) -> None:
    from ..corpus.download import DownloadError, download
    from ..corpus.ingest import InputError

    kwargs.pop("deny_private", None)  # the default now
    kwargs["blocklist"] = list(kwargs.get("blocklist") or ()) or None
    try:
        summary = download(list(inputs), output, mode=mode, retry_failed_rows=retry_failed,
                           command=shlex.join(["ccmb"] + sys.argv[1:]), **kwargs)
    except (InputError, DownloadError, ValueError, FileNotFoundError) as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(summary.report())  # the library logs a loud warning when more than 30% failed
    if not summary.complete:
        raise click.ClickException("the shard set is incomplete: run the same command again to resume")
    if not summary.successes:
        top = ", ".join(f"{r} ({n})" for r, n in summary.top_failures(3)) or "no rows"
        raise click.ClickException(f"no image was downloaded ({summary.rows} rows failed; top reasons: {top}); "
                                   f"the summary is in {summary.output_dir}/_ccmb/summary.json")


@click.group("download")
def download_group() -> None:
    """Download image URL lists into a ccmb shard set (img2dataset; resumable).

    Run the same command again to resume after an interruption: finished shards are kept, unfinished
    ones are removed and downloaded again. Polite and safe by default: robots.txt, opt-out headers
    (X-Robots-Tag, Content-Usage, tdm-reservation), per-host pacing with backoff, an honest user agent
    (add --contact), no private addresses. Only http(s) URLs are fetched (redirects too); every input
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
      ccmb download zero -i zero_2m/ -o shards/zero_2m --contact mailto:me@example.org
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
