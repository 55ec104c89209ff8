"""A download folder and a scores file with planted float16 embeddings (no model involved): near copies, a
chain x~y~z (x !~ z), an unscored and a missing sample. Builders for the semantic-dedup tests.

A uniquely named module (not ``conftest``): test files import from it by name."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "corpus_curation"))
from curation_helpers import jpeg, rand_image, write_download  # noqa: E402

from ccmb.corpus.tables.scores import SCORES_INFO, SCORES_SCHEMA  # noqa: E402

N, PER_SHARD, DIM = 240, 80, 16


def _unit(x):
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def planted_embeddings(root: Path):
    """A download folder of N samples (the last one not downloaded) and a scores file whose float16
    embeddings hold planted near copies, a chain x~y~z (x !~ z), an unscored and a missing sample."""
    img = jpeg(rand_image(0, size=(32, 32)))
    rows = [dict(url=f"http://x/{i}.jpg", caption=f"图{i}", image=img) for i in range(N)]
    rows[-1]["image"] = None
    dl = write_download(root / "dl", rows, per_shard=PER_SHARD)
    rng = np.random.default_rng(3)
    emb = _unit(rng.normal(size=(N, DIM)))
    copies = {10: 5, 90: 5, 200: 170, 171: 30, 181: 100}  # copy (higher key) -> original (cosine ~0.99)
    for c, o in copies.items():
        emb[c] = _unit(emb[o:o + 1] + 0.02 * rng.normal(size=(1, DIM)))[0]
    u, v = _unit(rng.normal(size=(2, DIM)))
    v = _unit((v - (u @ v) * u)[None])[0]
    theta = np.arccos(0.965)
    for i, k in ((40, 0), (120, 1), (41, 2)):  # chain: cos 0.965 between neighbours, 0.86 x to z
        emb[i] = np.cos(k * theta) * u + np.sin(k * theta) * v
    emb_dir = root / "emb"
    emb_dir.mkdir()
    keys = read_decisions_keys(dl)
    tables = []
    for s in range(N // PER_SHARD):
        lo, hi = s * PER_SHARD, (s + 1) * PER_SHARD
        np.save(emb_dir / f"{s:05d}.image.npy", emb[lo:hi].astype(np.float16))
        take = [i for i in range(lo, hi) if i not in (60, N - 1)]  # 60: not in the scores file
        err = [("cannot decode" if i == 150 else None) for i in take]
        cols = {"key": [keys[i] for i in take], "shard": [f"{s:05d}.tar"] * len(take),
                "row": [i - lo for i in take], "error": err}
        tables.append(pa.table({f.name: pa.array(cols.get(f.name, [0.5] * len(take)), f.type)
                                for f in SCORES_SCHEMA}))
    scores = root / "scores.parquet"
    pq.write_table(pa.concat_tables(tables).replace_schema_metadata(
        {SCORES_INFO: json.dumps({"embeddings": "emb", "dim": DIM}).encode()}), scores)
    return dl, scores, keys, copies


def read_decisions_keys(dl: Path):
    return sorted(pq.read_table(sorted(dl.glob("*.parquet")), columns=["key"]).column("key").to_pylist())
