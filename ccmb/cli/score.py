"""``ccmb score``: image-text agreement of a corpus under a benchmark model (a composition root: it wires
:mod:`ccmb_bench.scoring` and :mod:`ccmb_bench.adapters` to the command line; the corpus library only reads
the scores parquet and the embedding shards)."""
from __future__ import annotations

import click

from ..clikit import input_errors_as_click


@click.command("score")
@click.option("--input", "input_dir", required=True, type=click.Path(exists=True, file_okay=False),
              help="Download folder or shard set (NNNNN.tar files).")
@click.option("--model", required=True,
              help="Any model ccmb-bench can load: a registered name (ccmb-bench models), a trainer output or a "
                   "Chinese-CLIP folder.")
@click.option("--output", required=True, type=click.Path(dir_okay=False), help="Scores parquet to write.")
@click.option("--checkpoint", default=None, help="Weights for a registered model name.")
@click.option("--tokenizer", default=None, help="vocab.txt when the model folder has none.")
@click.option("--embeddings", default=None, type=click.Path(file_okay=False),
              help="Folder of the float16 embedding shards and per-shard parts (default: OUTPUT stem + _embeddings).")
@click.option("--batch-size", default=64, show_default=True, help="Images (and texts) per forward pass.")
@click.option("--device", default=None, help="cpu or cuda (default: cuda when present).")
@click.option("--draft/--full-decode", default=True, show_default=True,
              help="Decode JPEGs at the smallest DCT scale not below the model's input size (faster; scores "
                   "differ slightly from full decoding).")
@input_errors_as_click
def score_cmd(input_dir, model, output, checkpoint, tokenizer, embeddings, batch_size, device, draft) -> None:
    """Cosine of image and text embeddings per sample (primary text, title, content, query).

    Resumable per shard: a rerun skips shards whose part is written. Then choose a threshold with
    `ccmb stats --scores SCORES.parquet --histogram scores.png` and filter with
    `ccmb filter --scores SCORES.parquet --keep-top-percent P`.

    \b
    Examples:
      ccmb score --input dl/ --model r2d2-vitb16 --output scores.parquet --device cuda
    """
    from pathlib import Path

    from ccmb_bench.adapters import load_adapter
    from ccmb_bench.scoring import default_device, score_corpus

    from .. import outdir
    from ..corpus.tables.scores import is_scores_file

    output = Path(output)
    emb = Path(embeddings) if embeddings else output.with_name(output.stem + "_embeddings")
    outdir.refuse_inside(output, [input_dir])
    outdir.refuse_inside(emb, [input_dir])
    if output.exists() and not is_scores_file(output):
        raise click.ClickException(f"{output}: exists and is not a scores file of `ccmb score`; refusing to replace "
                                   "it: choose another --output")
    outdir.claim(emb, "score embeddings", legacy=lambda f: (f / "model.json").is_file(),
                 hint="choose another --embeddings folder")
    adapter = load_adapter(model, checkpoint=checkpoint, device=device or default_device(), tokenizer=tokenizer)
    with outdir.FolderLock(emb):
        summary = score_corpus(input_dir, adapter, output, embeddings=emb, batch_size=batch_size, progress=True,
                               draft=draft)
    for line in summary.lines():
        click.echo(line)
