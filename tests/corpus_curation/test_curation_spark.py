"""--engine spark gives the same decision tables as the in-process engine (Spark local mode)."""
from __future__ import annotations

import pytest

from ccmb.corpus.dedup import DedupConfig, dedup_table
from ccmb.corpus.filter import FilterConfig, filter_table
from ccmb.corpus.urlnorm import normalize_urls

pytestmark = pytest.mark.spark

URLS = ["http://Img.Example.com/a/b.jpg", "https://img.example.com/a/b.jpg/", " https://IMG.example.com:443/a/b.jpg?"
        "utm_source=x&utm_medium=y#frag", "http://img.example.com/a/b.jpg?x=1&utm_x=2&y=3", "", None, "not a url",
        "http://h.com/?spm=1&a=2&gclid=3", "HTTP://H.COM//", "http://h.com/p?q=/"]


def test_spark_equals_in_process(planted, make_download, spark, tmp_path):
    d, _ = planted
    # filter: a config that makes every rule fire somewhere
    cfg = FilterConfig(min_side=210, max_ratio=1.2, blocklist=["外滩", "1+1"], min_chinese_share=0.5)
    local = filter_table(d, cfg)
    assert local.equals(filter_table(d, cfg, engine="spark", spark=spark))
    assert set(local.column("reason").to_pylist()) >= {None, "too_small", "blocklist", "not_downloaded"}

    # dedup, all four levels, with the filter table as an earlier table
    from ccmb.corpus.table import write_decisions

    write_decisions(tmp_path / "f.parquet", filter_table(d, FilterConfig(blocklist=["故宫"])))
    for keep in ([], [tmp_path / "f.parquet"]):
        local = dedup_table(d, DedupConfig(), keep_tables=keep)
        remote = dedup_table(d, DedupConfig(), keep_tables=keep, engine="spark", spark=spark)
        assert local.equals(remote), (local.to_pylist(), remote.to_pylist())
        assert len(set(local.column("reason").to_pylist())) >= 5

    # URL normal forms agree row by row (Java regex vs RE2)
    import pyarrow as pa
    from pyspark.sql import functions as F

    from ccmb.corpus.engine_spark import spark_normalize_url

    df = spark.createDataFrame([(u,) for u in URLS], schema="url string")
    remote = [r[0] for r in df.select(spark_normalize_url(F.col("url"))).collect()]
    assert remote == normalize_urls(pa.array(URLS, pa.string())).to_pylist()
