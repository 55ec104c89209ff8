"""Corpus curation commands: ``ccmb filter``, ``ccmb dedup``, ``ccmb decontaminate``, ``ccmb build-shards``,
``ccmb verify``, ``ccmb stats`` (see docs/curation.md)."""
from __future__ import annotations

import functools
import json
import shlex
import sys

import click

from .. import shards as fmt
from ..corpus.tables.schema import CurationError
from ..outdir import OutputFolderError
from .storage_args import Location

ENGINE_OPTION = click.option("--engine", type=click.Choice(["local", "spark"]), default="local", show_default=True,
                             help="Where the metadata work runs: in-process (pyarrow/numpy) or on Spark.")
MEMORY_OPTION = click.option("--memory-gb", type=click.FloatRange(min=0, min_open=True), default=4.0, show_default=True,
                             help="In-process engine: memory budget in GB; rows stream in batches and spill to "
                                  "hash-partitioned buckets next to the output, so memory follows this, not the rows.")
_MASTER = click.option("--spark-master", default=None,
                       help="Spark master for --engine spark (default $CCMB_SPARK_MASTER or local[*]).")
_CONF = click.option("--spark-conf", "spark_conf", multiple=True, metavar="KEY=VALUE",
                     help="A Spark setting for --engine spark (repeatable), e.g. spark.driver.memory=1g, "
                          "spark.executor.memory=8g, spark.sql.shuffle.partitions=2000.")


def MASTER_OPTION(fn):
    """``--spark-master`` and ``--spark-conf``; the command receives them as one ``spark_master`` value."""
    @functools.wraps(fn)
    def wrapper(*args, spark_master=None, spark_conf=(), **kwargs):
        return fn(*args, spark_master=(spark_master, spark_conf), **kwargs)
    return _MASTER(_CONF(wrapper))


def _errors(fn):
    """Turn bad-input errors (they name the file) into a clean CLI error."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except (CurationError, OutputFolderError, fmt.ShardFormatError, FileNotFoundError) as exc:
            raise click.ClickException(str(exc)) from exc
    return wrapper


def _spark(engine: str, master):
    """The Spark session of ``--engine spark``: ``master`` is (--spark-master, --spark-conf pairs)."""
    if engine != "spark":
        return None
    from ..clikit import parse_key_values
    from ..corpus.api import spark_session as session

    master, conf = master if isinstance(master, tuple) else (master, ())
    return session(master, conf=parse_key_values(conf, "--spark-conf"))


def _echo_summary(summary) -> None:
    for line in summary.lines():
        click.echo(line)
    click.echo(f"wrote {summary.output}")


@click.command("filter")
@click.option("--input", "input_dir", required=True, type=Location(exists=True, file_okay=False),
              help="Download folder (NNNNN.tar + NNNNN.parquet).")
@click.option("--output", required=True, type=Location(),
              help="Decision table to write (.parquet; with --engine spark a folder of parts). An existing table is replaced.")
@click.option("--min-side", default=200, show_default=True, help="Minimum short side of the original image, px (0: off).")
@click.option("--max-ratio", default=3.0, show_default=True, help="Maximum long/short side ratio (0: off).")
@click.option("--min-text-len", default=2, show_default=True, help="Minimum text length, characters (0: off).")
@click.option("--max-text-len", default=512, show_default=True, help="Maximum text length, characters (0: off).")
@click.option("--min-chinese-share", default=0.3, show_default=True,
              help="Minimum share of CJK ideographs in the text (0: off).")
@click.option("--blocklist", type=click.Path(exists=True, dir_okay=False), default=None,
              help="File of blocked TEXT TERMS, one per line (# comments); substring match, case-insensitive; "
                   "reason blocklist. (A takedown list of image hashes, URLs or domains is build-shards "
                   "--blocklist.)")
@click.option("--text-field", type=click.Choice(["caption", "title", "content", "query"]), default="caption",
              show_default=True, help="Text the text rules look at (caption falls back to title).")
@click.option("--scores", type=click.Path(exists=True, dir_okay=False), default=None,
              help="Scores parquet of `ccmb score`: rows below the threshold get reason low_agreement.")
@click.option("--min-score", type=float, default=None, help="Absolute cosine threshold (model-specific).")
@click.option("--keep-top-percent", type=click.FloatRange(0, 100), default=None,
              help="Keep the top P% of scored samples (ties at the threshold kept).")
@click.option("--score-field", type=click.Choice(["score", "score_title", "score_content", "score_query"]),
              default="score", show_default=True, help="Which cosine the threshold applies to.")
@MEMORY_OPTION
@ENGINE_OPTION
@MASTER_OPTION
@_errors
def filter_cmd(input_dir, output, min_side, max_ratio, min_text_len, max_text_len, min_chinese_share, blocklist,
               text_field, scores, min_score, keep_top_percent, score_field, memory_gb, engine, spark_master) -> None:
    """Filter a download folder by image size, aspect ratio, text length, Chinese share and a blocklist
    (and image-text agreement with --scores).

    Writes one row per input row (key, shard, keep, reason) and prints drop counts per reason.

    \b
    Examples:
      ccmb filter --input dl/ --output filter.parquet --min-side 64 --max-ratio 3 --min-chinese-share 0.5
    """
    from ..corpus.api import apply_scores, filter_samples

    if scores and (min_score is None) == (keep_top_percent is None):
        raise click.UsageError("--scores needs exactly one of --min-score and --keep-top-percent")
    if not scores and (min_score is not None or keep_top_percent is not None):
        raise click.UsageError("--min-score / --keep-top-percent need --scores")
    summary = filter_samples(input_dir, output, min_side=min_side, max_ratio=max_ratio, min_text_len=min_text_len,
                             max_text_len=max_text_len, min_chinese_share=min_chinese_share, blocklist=blocklist,
                             text_field=text_field, engine=engine, spark=_spark(engine, spark_master), progress=True,
                             memory_gb=memory_gb)
    if scores:
        summary = apply_scores(output, scores, min_score=min_score, keep_top_percent=keep_top_percent,
                               field=score_field, engine=engine, spark=_spark(engine, spark_master),
                               memory_gb=memory_gb)
        click.echo(f"{score_field} threshold {summary.threshold:.4f}")
    _echo_summary(summary)


def _click_type(opt):
    if opt.type == "path":
        return click.Path(exists=True, dir_okay=False)
    if isinstance(opt.type, (tuple, list)):
        return click.Choice(list(opt.type))
    if opt.type is not None:
        return opt.type
    return type(opt.default) if opt.default is not None else str


def _level_options(fn):
    """One ``--NAME/--no-NAME`` switch and the options of every level of the registry
    (``ccmb.corpus.steps.levels``)."""
    from ..corpus.steps.levels import levels

    for level in reversed(list(levels().values())):
        for opt in reversed(level.options):
            fn = click.option(opt.flag, f"opt_{opt.param}", default=opt.default, type=_click_type(opt),
                              show_default=opt.default is not None, help=opt.help)(fn)
        fn = click.option(level.flag, f"level_{level.name}", default=level.default, show_default=True,
                          help=level.help)(fn)
    return fn


@click.command("dedup")
@click.option("--input", "input_dir", required=True, type=Location(exists=True, file_okay=False),
              help="Download folder (NNNNN.tar + NNNNN.parquet).")
@click.option("--output", required=True, type=Location(),
              help="Decision table to write (.parquet; with --engine spark a folder of parts). An existing table is replaced.")
@_level_options
@click.option("--keep", "keep_tables", multiple=True, type=Location(exists=True),
              help="Earlier decision tables (e.g. the filter's): only samples they keep take part, so every "
                   "kept representative survives them.")
@click.option("--workers", default=1, show_default=True, help="Processes of the in-process engine (pHash of the tars).")
@MEMORY_OPTION
@ENGINE_OPTION
@MASTER_OPTION
@_errors
def dedup_cmd(input_dir, output, keep_tables, workers, memory_gb, engine, spark_master, **switches) -> None:
    """Drop duplicates level by level (URL, exact bytes, pHash, caption, ...); the lowest key of a group stays.

    Each dropped row records the kept sample it duplicates (duplicate_of); near-duplicates are checked
    exactly and never chained. Run it after the filter with --keep filter.parquet.

    \b
    Examples:
      ccmb dedup --input dl/ --output dedup.parquet --keep filter.parquet
    """
    from ..corpus.api import dedup_samples
    from ..corpus.steps.levels import levels as level_table

    table = level_table()
    on = {name[len("level_"):] for name, value in switches.items() if name.startswith("level_") and value}
    params = {name[len("opt_"):]: value for name, value in switches.items() if name.startswith("opt_")}
    for level in table.values():
        if any(o.enables and params.get(o.param) for o in level.options):
            on.add(level.name)
    if not on:
        raise click.UsageError("every dedup level is switched off")
    summary = dedup_samples(input_dir, output, levels=[n for n in table if n in on], keep_tables=keep_tables,
                            workers=workers, engine=engine, spark=_spark(engine, spark_master), progress=True,
                            params=params, memory_gb=memory_gb)
    _echo_summary(summary)


@click.command("decontaminate")
@click.option("--input", "input_dir", required=True, type=Location(exists=True, file_okay=False),
              help="Download folder or shard set (NNNNN.tar + NNNNN.parquet).")
@click.option("--against", required=True,
              help="Evaluation sets, comma-separated registry names (`ccmb datasets list`); NAME:SPLIT picks a "
                   "split per set.")
@click.option("--root", required=True, type=click.Path(exists=True, file_okay=False),
              help="Data root of the evaluation sets (their official layout).")
@click.option("--split", default=None, help="Split of every set (default: the split the benchmark evaluates).")
@click.option("--output", required=True, type=Location(),
              help="Decision table to write (.parquet; a folder of parts with --engine spark).")
@click.option("--report", "report_path", type=Location(), default=None,
              help="Report (JSON): per set, images and texts with copies in the corpus, with examples.")
@click.option("--phash-threshold", default=6, show_default=True,
              help="Max Hamming distance between pHash variants (mirror images included).")
@click.option("--caption-threshold", default=0.8, show_default=True,
              help="Min exact n-gram Jaccard of a corpus caption and an evaluation text.")
@click.option("--min-caption-chars", default=8, show_default=True,
              help="Texts shorter than this (normalised) never count as copies.")
@click.option("--drop-caption-matches", is_flag=True,
              help="Also drop samples whose caption copies an evaluation text (default: reported only).")
@click.option("--text-field", type=click.Choice(["caption", "title", "content", "query"]), default="caption",
              show_default=True, help="Corpus text compared with the evaluation texts.")
@click.option("--image-check/--no-image-check", default=True, show_default=True,
              help="Confirm every pHash match with the second image check (aligned 32x32 thumbnails, mirror "
                   "image included); off: pHash distance alone.")
@click.option("--workers", default=1, show_default=True, help="Processes hashing tars (in-process engine).")
@MEMORY_OPTION
@ENGINE_OPTION
@MASTER_OPTION
@_errors
def decontaminate_cmd(input_dir, against, root, split, output, report_path, phash_threshold, caption_threshold,
                      min_caption_chars, drop_caption_matches, text_field, image_check, workers, memory_gb, engine,
                      spark_master) -> None:
    """Drop corpus samples whose image copies an image of the evaluation sets (reason eval_overlap).

    Exact bytes (sha256) and perceptual copies (pHash variants, robust to re-encoding, resizing, small
    crops, brightness, overlays and flips, each confirmed by a pixel check of aligned thumbnails);
    captions copying evaluation texts are reported. Pass the table
    to build-shards with --keep.

    \b
    Examples:
      ccmb decontaminate --input dl/ --against icr,icm,flickr30k-cna --root /data/ccmb --output decontaminate.parquet --report decontaminate.json
    """
    from ..corpus.api import decontaminate
    from ..corpus.steps.decontaminate import DecontaminationConfig, format_report
    from ..datasets.base import DatasetError

    names = [a.strip() for a in against.split(",") if a.strip()]
    config = DecontaminationConfig(phash_threshold=phash_threshold, caption_threshold=caption_threshold,
                                   min_caption_chars=min_caption_chars, drop_caption_matches=drop_caption_matches,
                                   text_field=text_field, image_check=image_check, workers=workers, progress=True)
    try:
        summary, report = decontaminate(input_dir, names, root, output, split=split, report_path=report_path,
                                        config=config, engine=engine, spark=_spark(engine, spark_master),
                                        memory_gb=memory_gb)
    except DatasetError as exc:
        raise click.ClickException(str(exc)) from exc
    for line in format_report(report):
        click.echo(line)
    _echo_summary(summary)
    if report_path:
        click.echo(f"wrote {report_path}")


@click.command("build-shards")
@click.option("--input", "input_dir", required=True, type=Location(exists=True, file_okay=False),
              help="Download folder (NNNNN.tar + NNNNN.parquet).")
@click.option("--output", "output_dir", required=True, type=Location(), help="Final shard folder.")
@click.option("--keep", "keep_tables", multiple=True, type=Location(exists=True),
              help="Decision tables (files or partitioned folders); a sample is kept when all keep it. Without: "
                   "default filter + dedup run here.")
@click.option("--samples-per-shard", default=10000, show_default=True, help="Samples per output shard.")
@click.option("--shuffle", is_flag=True, help="Shuffle samples across shards (seeded).")
@click.option("--seed", default=0, show_default=True, help="Seed of --shuffle.")
@click.option("--workers", default=1, show_default=True, help="Processes of the in-process engine (writing shards, "
              "pHash of the default dedup).")
@MEMORY_OPTION
@click.option("--allow-empty", is_flag=True, help="Write an empty shard set when every row is dropped (otherwise "
              "an error giving the drop counts).")
@click.option("--blocklist", "blocklist", multiple=True, type=click.Path(exists=True, dir_okay=False),
              help="Takedown list (repeatable): one MD5 or SHA-256 image hash, http(s) URL or domain per line, as "
                   "for `ccmb download --blocklist`; matching rows are dropped (reasons blocklist_md5, "
                   "blocklist_sha256, blocklist_url, blocklist_domain) and the list's SHA-256 is recorded. Not "
                   "the text-term list of `ccmb filter --blocklist`.")
@ENGINE_OPTION
@MASTER_OPTION
@_errors
def build_shards_cmd(input_dir, output_dir, keep_tables, samples_per_shard, shuffle, seed, workers, memory_gb,
                     allow_empty, blocklist, engine, spark_master) -> None:
    """Rewrite the kept samples into final shards with sizes.json and manifest.json (restartable).

    The output folder is locked while the command runs; a rerun with other settings (another blocklist
    included) is refused.

    \b
    Examples:
      ccmb build-shards --input dl/ --keep filter.parquet --keep dedup.parquet --keep decontaminate.parquet --output shards/ --shuffle
      ccmb build-shards --input dl/ --keep filter.parquet --blocklist takedown.txt --output shards-v2/
    """
    from ..corpus.api import build_shards

    summary = build_shards(input_dir, output_dir, keep_tables=keep_tables, samples_per_shard=samples_per_shard,
                           shuffle=shuffle, seed=seed, engine=engine, spark=_spark(engine, spark_master),
                           workers=workers, progress=True, command=shlex.join(sys.argv), memory_gb=memory_gb,
                           allow_empty=allow_empty, blocklist=list(blocklist) or None)
    for line in summary.lines():
        click.echo(line)


@click.command("verify")
@click.argument("shard_dir", type=Location(exists=True, file_okay=False))
@click.option("--no-images", is_flag=True, help="Skip decoding every image (checksums and counts only).")
@_errors
def verify_cmd(shard_dir, no_images) -> None:
    """Check SHARD_DIR against its manifest: checksums, counts, every image; exit 1 on any problem.

    \b
    Examples:
      ccmb verify shards/
    """
    from ..corpus.verify import verify_shards

    report = verify_shards(shard_dir, decode_images=not no_images, progress=True)
    for problem in report.problems:
        click.echo(f"PROBLEM: {problem}", err=True)
    click.echo(f"{report.shards_checked} shards, {report.samples} samples, {len(report.problems)} problems")
    if not report.ok:
        sys.exit(1)


@click.command("stats")
@click.argument("path", type=Location(exists=True), required=False)
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.option("--scores", type=click.Path(exists=True, dir_okay=False), default=None,
              help="Also (or only, without PATH) the score distribution of a `ccmb score` parquet.")
@click.option("--histogram", type=click.Path(dir_okay=False), default=None,
              help="With --scores: write the score histogram (keep-top-percent thresholds marked) to this PNG.")
@_errors
def stats_cmd(path, as_json, scores, histogram) -> None:
    """Counts, status reasons, text-length and image-size distributions of a download or shard folder.

    \b
    Examples:
      ccmb stats dl/
      ccmb stats --scores scores.parquet --histogram scores.png
    """
    from ..corpus.stats import corpus_stats, format_stats

    if not path and not scores:
        raise click.UsageError("give PATH (a download or shard folder) and/or --scores")
    if path:
        stats = corpus_stats(path)
        click.echo(json.dumps(stats, ensure_ascii=False, indent=2) if as_json else format_stats(stats))
    if scores:
        from ..corpus.steps.scores import format_score_stats, histogram_png, score_stats

        sstats = score_stats(scores)
        click.echo(json.dumps(sstats, ensure_ascii=False, indent=2) if as_json else format_score_stats(sstats))
        if histogram:
            click.echo(f"wrote {histogram_png(sstats, histogram)}", err=as_json)
