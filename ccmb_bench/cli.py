"""The ``ccmb-bench`` command line (a click group; sub-commands register here)."""
from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Optional, Tuple

import click

from ccmb import __version__
from ccmb.clikit import finish_help, input_errors_as_click, parse_key_values, setup_logging
from ccmb_bench.options import default as run_default
from ccmb_bench.protocols import PROTOCOL_NAMES



@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="ccmb-bench")
@click.option("-v", "--verbose", count=True, help="More logging (-v info, -vv debug).")
def main(verbose: int) -> None:
    """ccmb-bench: evaluate models on the CCMB downstream tasks and publish leaderboards.

    \b
    Examples:
      ccmb-bench run --model r2d2-vitl14 --dataset icr,iqr --root /data/ccmb
      ccmb-bench leaderboard --results bench_out/results --html leaderboard.html
    """
    setup_logging(verbose)


@main.command("run")
@click.option("--model", "-m", required=True, help="Registered name (see `ccmb-bench models`), an R2D2 config "
              "name with --checkpoint, or a model directory (trainer output or saved ChineseCLIPModel).")
@click.option("--checkpoint", "-c", default=None, help="Checkpoint file (.pth/.safetensors) or directory "
              "(default: $CCMB_HOME/models/<name>/).")
@click.option("--tokenizer", default=None, help="R2D2 tokenizer (vocab.txt or directory); default: next to the "
              "checkpoint.")
@click.option("--dataset", "-d", "datasets", required=True, help="NAME[,NAME...] or 'all' (see `ccmb-bench datasets`).")
@click.option("--root", "-r", required=True, type=click.Path(path_type=Path), help="Data root (official layouts).")
@click.option("--split", default=None, help="Split (default: the one the paper evaluates, per dataset).")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True)
@click.option("--batch-size", type=click.IntRange(1), default=run_default("batch_size"), show_default=True)
@click.option("--top-k", type=click.IntRange(1), default=None,
              help="R2D2 re-ranking candidates per query (default: the dataset's, see `ccmb-bench datasets "
                   "--json`, else the model config's).")
@click.option("--protocol", type=click.Choice(PROTOCOL_NAMES), default=run_default("protocol"), show_default=True,
              help="official: each dataset's reference evaluation (every line a query, its tie order); strict: "
                   "identical texts merged, ties count against the query (docs/bench.md).")
@click.option("--bootstrap", "bootstrap_n", type=click.IntRange(0), default=run_default("bootstrap"),
              show_default=True, help="Resamples of the 95% bootstrap intervals (0: none).")
@click.option("--bootstrap-seed", type=int, default=run_default("bootstrap_seed"), show_default=True)
@click.option("--no-rerank", is_flag=True, help="R2D2: report the dual-encoder stage only.")
@click.option("--output", "-o", type=click.Path(path_type=Path), default=run_default("output"), show_default=True,
              help="Results go to OUTPUT/results, embeddings to OUTPUT/cache.")
@click.option("--skip-existing", is_flag=True, help="Skip (model, dataset) pairs whose result file exists.")
@click.option("--no-cache", is_flag=True, help="Do not read or write the embedding cache.")
@click.option("--param", "-p", multiple=True, help="Dataset parameter KEY=VALUE (e.g. num_images=1000).")
@click.option("--predictions", type=click.Path(exists=True, dir_okay=False), default=None,
              help="Captioning: predictions file (JSON {image_id: caption} or JSON lines).")
@click.option("--caption-pool", default=run_default("caption_pool"), show_default=True,
              help="Captioning without predictions: split whose captions the retrieval baseline picks from.")
@click.option("--generated", type=click.Path(exists=True, file_okay=False), default=None,
              help="Text-to-image: folder of generated images named <prompt_id>.png.")
@click.option("--max-hidden-gb", type=click.FloatRange(0), default=run_default("max_hidden_gb"), show_default=True,
              help="Matching with cross encoders: above this many GB of hidden states, stream the pairs in chunks.")
@click.option("--setting", default="", help="Label for the leaderboard's setting column (e.g. zero-shot, fine-tuned).")
@click.option("--no-fetch", is_flag=True, help="Never download: missing official weights or public data are an "
              "error (default: fetched by name into $CCMB_HOME / --root, see `ccmb fetch`).")
@input_errors_as_click
def run_cmd(model: str, checkpoint: Optional[str], tokenizer: Optional[str], datasets: str, root: Path,
            split: Optional[str], device: str, batch_size: int, top_k: Optional[int], protocol: str,
            bootstrap_n: int, bootstrap_seed: int, no_rerank: bool, output: Path, skip_existing: bool, no_cache: bool, param: Tuple[str, ...], predictions: Optional[str],
            caption_pool: str, generated: Optional[str], max_hidden_gb: float,
            setting: str, no_fetch: bool = False) -> None:
    """Evaluate a model on one or more downstream datasets; writes one result JSON per dataset.

    \b
    Examples:
      ccmb-bench run --model r2d2-vitl14 --dataset icr,iqr,flickr30k-cna --root /data/ccmb
      ccmb-bench run --model runs/icr/best --dataset icr --root /data/ccmb --setting fine-tuned
    """
    from ccmb.fetch import offline
    from ccmb_bench import precheck

    params = parse_key_values(param)
    fetch = not no_fetch and not offline()
    # names and paths first: a mistake is answered before torch and transformers are imported
    precheck.check_run(model, datasets.split(","), root, split=split, params=params, checkpoint=checkpoint,
                       tokenizer=tokenizer, fetch=fetch)
    precheck.set_offline(not fetch)

    from ccmb_bench.adapters.tvcompat import prepare_torchvision

    prepare_torchvision()  # before transformers loads: a CUDA torchvision beside a CPU torch (open-clip extra)
    from ccmb.datasets import DatasetError
    from ccmb_bench.adapters import MissingCheckpointError, UnknownModelError
    from ccmb_bench.runner import DeviceError, MissingDataError, RunOptions, run
    from models import CheckpointError

    opts = RunOptions(root=root, output=output, split=split, device=device, batch_size=batch_size, top_k=top_k,
                      skip_existing=skip_existing, cache=not no_cache, rerank=not no_rerank,
                      params=params, predictions=predictions, generated=generated, caption_pool=caption_pool,
                      setting=setting, max_hidden_gb=max_hidden_gb, protocol=protocol, bootstrap=bootstrap_n,
                      bootstrap_seed=bootstrap_seed, fetch=fetch)
    try:
        paths = run(model, datasets.split(","), opts, checkpoint=checkpoint, tokenizer=tokenizer)
    except (UnknownModelError, MissingCheckpointError, MissingDataError, DatasetError, DeviceError,
            CheckpointError) as exc:
        raise click.ClickException(str(exc)) from exc
    for p in paths:
        res = json.loads(p.read_text(encoding="utf-8"))
        shown = {k: round(v, 2) for k, v in res["metrics"].items() if isinstance(v, float)}
        click.echo(f"{res['model']} {res['dataset']}/{res['split']} {res['task']} "
                   f"[{res['protocol']['name']}]: {shown}  -> {p}")
    if not paths:
        click.echo("nothing evaluated (all skipped)")


@main.command("compare")
@click.argument("runs", nargs=-1, required=True, type=click.Path(exists=True, path_type=Path))
@click.option("--bootstrap", "bootstrap_n", type=click.IntRange(1), default=run_default("bootstrap"),
              show_default=True, help="Paired bootstrap resamples.")
@click.option("--seed", type=int, default=run_default("bootstrap_seed"), show_default=True)
@click.option("--protocol", type=click.Choice(PROTOCOL_NAMES), default=None,
              help="With folders: compare only the results of this protocol.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@input_errors_as_click
def compare_cmd(runs: Tuple[Path, ...], bootstrap_n: int, seed: int, protocol: Optional[str], as_json: bool) -> None:
    """Paired bootstrap tests between RUNS (result JSONs, or folders holding one run each), on the queries
    all of them evaluated; same dataset, split and protocol required.

    Two runs: every metric, A - B with its 95% interval and p-value. Three or more: per dataset the rank
    groups (Holm-corrected, 5%) and the pairwise table of the main metric.

    \b
    Examples:
      ccmb-bench compare bench/r2d2 bench/prd2 bench/cclip-h14 --protocol official
      ccmb-bench compare runs/a/results runs/b/results
    """
    from ccmb_bench.compare import compare, compare_paths

    if len(runs) < 2:
        raise click.UsageError("give at least two runs (result JSONs or folders)")
    if len(runs) == 2:
        rows = compare(runs[0], runs[1], bootstrap_n, seed, protocol)
        if as_json:
            click.echo(json.dumps(rows, ensure_ascii=False, indent=2))
            return
        _echo_two(rows)
        return
    tables = compare_paths(list(runs), bootstrap_n, seed, protocol)
    if as_json:
        click.echo(json.dumps(tables, ensure_ascii=False, indent=2))
        return
    for t in tables:
        _echo_table(t)


def _echo_two(rows) -> None:
    head = None
    for r in rows:
        if (r["a_file"], r["b_file"]) != head:
            head = (r["a_file"], r["b_file"])
            shared = ", ".join(f"{n} {g}" for g, n in r["shared_queries"].items())
            click.echo(f"{r['dataset']}/{r['split']} {r['task']} [{r['protocol']}], shared queries: {shared}\n"
                       f"  A = {r['a_file']}\n  B = {r['b_file']}")
        lo, hi = r["diff_ci95"]
        click.echo(f"  {r['metric']:>22s}: A {r['a']:7.2f}  B {r['b']:7.2f}  A-B {r['diff']:+7.2f} "
                   f"[{lo:+.2f}, {hi:+.2f}]  p={r['p_value']:.4f}")


def _echo_table(t) -> None:
    main = t["main_metric"]
    shared = ", ".join(f"{n} {g}" for g, n in t["shared_queries"].items())
    click.echo(f"{t['dataset']}/{t['split']} {t['task']} [{t['protocol']}], shared queries: {shared}; "
               f"{main}, paired bootstrap ({t['resamples']} resamples), Holm-corrected, alpha {t['alpha']:g}")
    names = [f"R{k + 1}" for k in range(len(t["runs"]))]
    for name, r in zip(names, t["runs"]):
        group = f"group {r['group']}" if r["group"] is not None else "no group"
        click.echo(f"  {name} {r['values'].get(main, float('nan')):7.2f}  {group:8s}  {r['model']}  ({r['file']})")
    width = max(16, max(len(n) for n in names) + 2)
    click.echo("  " + " " * 4 + "".join(f"{n:>{width}s}" for n in names[1:]))
    cells = {(p["a"], p["b"]): p for p in t["pairs"][main]}
    for i, name in enumerate(names[:-1]):
        line = f"  {name:4s}"
        for j in range(1, len(names)):
            p = cells.get((i, j))
            line += f"{'':>{width}s}" if p is None else f"{p['diff']:+7.2f} p={p['p_holm']:.3f}".rjust(width)
        click.echo(line)
    click.echo("  (row minus column; p = Holm-adjusted across the pairs)")


@main.command("models")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def models_cmd(as_json: bool) -> None:
    """List the registered models (built-in and plug-in families): family, size, source (hub id and
    revision), where the weights are looked up and the published reference rows each has.

    \b
    Examples:
      ccmb-bench models --json
    """
    from ccmb_bench.adapters import list_models

    rows = list_models()
    if as_json:
        click.echo(json.dumps(rows, ensure_ascii=False, indent=2))
        return
    pad = " " * 4
    for r in rows:
        click.echo(f"{r['name']:30s} {r['kind']:13s} {r['description']}")
        if r["size"]:
            click.echo(f"{pad}size: {r['size']}")
        if r["source"]:
            rev = r["revision"]
            rev = "" if not rev else (" (revision not pinned)" if rev == "unpinned" else f" @ {rev}")
            click.echo(f"{pad}source: {r['source']}{rev}")
        click.echo(f"{pad}weights: {r['weights']}")
        for ref in r["reference"]:
            value = "" if ref["value"] is None else f" {ref['metric']} {ref['value']}"
            click.echo(f"{pad}reference: {ref['dataset']}/{ref['split']} {ref['setting']}{value} "
                       f"[{ref['model']}; {ref['source']}]")
        if r["notes"]:
            click.echo(f"{pad}note: {r['notes']}")
        if r["plugin"]:
            click.echo(f"{pad}plug-in: {r['plugin']}")


@main.command("datasets")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def datasets_cmd(as_json: bool) -> None:
    """List the datasets the harness can evaluate, with task, default split and reference protocol.

    \b
    Examples:
      ccmb-bench datasets --json
    """
    from ccmb.datasets import list_datasets

    specs = list_datasets()
    if as_json:
        click.echo(json.dumps([s.to_dict() for s in specs], ensure_ascii=False, indent=2))
        return
    for s in specs:
        click.echo(f"{s.name:24s} {s.task:15s} split={s.default_split:10s} protocol={s.protocol:14s} {s.description}")


def _results_folder(results: Path) -> Path:
    """``--results`` must be an existing folder (one line otherwise)."""
    if not results.exists():
        raise click.ClickException(f"{results}: no such folder (give the --output folder of `ccmb-bench run`, "
                                   "or its results/)")
    if not results.is_dir():
        raise click.ClickException(f"{results}: not a folder (give the folder that holds the result JSONs)")
    return results


@main.command("leaderboard")
@click.option("--results", type=click.Path(path_type=Path), required=True,
              help="Folder with result JSONs (searched recursively, e.g. the run --output).")
@click.option("--csv", "csv_path", type=click.Path(path_type=Path), default=None, help="Write the table as CSV.")
@click.option("--markdown", type=click.Path(path_type=Path), default=None,
              help="Write Markdown: the overview + one compact table per dataset and task.")
@click.option("--html", type=click.Path(path_type=Path), default=None,
              help="Write a self-contained HTML page (overview matrix, per-dataset sections and charts).")
@click.option("--include-paper/--no-paper", default=True, show_default=True,
              help="Show the published rows (data/paper_results.json) beside the runs, for the datasets run.")
@click.option("--training-data", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help="A JSON of training-data declarations (format of ccmb_bench/data/training_data.json) added to "
                   "the shipped ones, e.g. for your own registered names or decontamination reports.")
@click.option("--bootstrap", "bootstrap_n", type=click.IntRange(1), default=run_default("bootstrap"),
              show_default=True, help="Paired bootstrap resamples of the rank groups.")
@click.option("--seed", type=int, default=run_default("bootstrap_seed"), show_default=True)
@click.option("--format", "fmt", type=click.Choice(["ccmb", "clip-benchmark"]), default="ccmb", show_default=True,
              help="CSV columns: ours (percent) or CLIP_benchmark's names (fractions).")
@click.option("--title", default="CCMB leaderboard", show_default=True)
@click.option("--strict", is_flag=True, help="A malformed result file is an error (default: a warning naming it, "
              "and the file is skipped).")
@input_errors_as_click
def leaderboard_cmd(results: Path, csv_path: Optional[Path], markdown: Optional[Path], html: Optional[Path],
                    include_paper: bool, training_data: Optional[Path], bootstrap_n: int, seed: int, fmt: str,
                    title: str, strict: bool) -> None:
    """Collect results into a leaderboard (CSV / Markdown / HTML); prints Markdown when no file is given.

    Runs are ranked in rank groups (paired bootstrap on their per-query results, 5%, Holm-corrected) within a
    dataset, protocol and block (zero-shot, fine-tuned on the set, seen in training), beside the published
    numbers of the same datasets.

    \b
    Examples:
      ccmb-bench leaderboard --results bench --html lb.html --markdown lb.md
    """
    from ccmb_bench.leaderboard import collect, export, to_markdown
    from ccmb_bench.training import load_declarations

    _results_folder(results)
    decl = load_declarations(training_data)
    if not (csv_path or markdown or html):
        click.echo(to_markdown(collect(results, include_paper, strict=strict, declarations=decl,
                                       resamples=bootstrap_n, seed=seed), title=title))
        return
    rows = export(results, csv_path, markdown, html, include_paper=include_paper, fmt=fmt, title=title,
                  strict=strict, declarations=decl, resamples=bootstrap_n, seed=seed)
    click.echo(f"{len(rows)} rows", err=True)


@main.command("plot")
@click.option("--results", type=click.Path(path_type=Path), required=True)
@click.option("--out", type=click.Path(path_type=Path), required=True, help="PNG file to write.")
@click.option("--include-paper", is_flag=True, help="Also draw the best published rows of the datasets run.")
@click.option("--top", type=click.IntRange(0), default=3, show_default=True,
              help="With --include-paper: the published rows drawn beside the runs of each dataset (best MR first).")
@input_errors_as_click
def plot_cmd(results: Path, out: Path, include_paper: bool, top: int) -> None:
    """Draw recall@K per model and retrieval dataset (PNG): one panel per dataset (more panels when it has
    many runs), t2i solid, i2t dotted, one legend entry per model.

    \b
    Examples:
      ccmb-bench plot --results bench --out recall.png --include-paper
    """
    from ccmb_bench.leaderboard import collect
    from ccmb_bench.plot import plot

    _results_folder(results)
    try:
        plot(collect(results, include_paper, rank=False), out, top_published=top)
    except ValueError as exc:
        raise click.ClickException(f"{results}: {exc}") from exc
    click.echo(str(out))


finish_help(main)  # every command's --help ends with its examples (keep this after the last command)

if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
