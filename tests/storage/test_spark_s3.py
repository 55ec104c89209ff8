"""The Spark engine on object storage: its tasks read the download folder and write the decision tables and
shards on the S3 server through fsspec (no Hadoop connector), with the driver's ``ccmb.storage.configure``
options shipped to them; the results equal the in-process engine's on local disk."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "corpus_curation"))
from curation_helpers import build_planted  # noqa: E402

from ccmb import shards, storage  # noqa: E402
from ccmb.corpus import api  # noqa: E402
from ccmb.corpus.tables.decisions import read_decisions  # noqa: E402

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]


@pytest.fixture
def s3_options(s3_server):
    """The endpoint and credentials as fsspec options of this process (the way a user's driver sets them);
    the executors get them with each task, whatever their environment."""
    import fsspec.config

    saved = dict(fsspec.config.conf.get("s3", {}))
    storage.configure("s3", endpoint_url=s3_server.endpoint, key=s3_server.env["AWS_ACCESS_KEY_ID"],
                      secret=s3_server.env["AWS_SECRET_ACCESS_KEY"])
    yield
    fsspec.config.conf["s3"] = saved
    storage.configure("s3")


def test_spark_engine_reads_and_writes_s3_like_the_local_engine_on_disk(spark, s3_options, s3_url, tmp_path):
    local, _ = build_planted(tmp_path / "dl")
    download = storage.join(s3_url, "dl")
    for p in sorted(Path(local).iterdir()):
        storage.write_bytes(storage.join(download, p.name), p.read_bytes())

    filt, dedup, out = (storage.join(s3_url, n) for n in ("filter.parquet", "dedup", "shards"))
    api.filter_samples(download, filt, min_side=16, engine="spark", spark=spark)
    api.dedup_samples(download, dedup, keep_tables=[filt], engine="spark", spark=spark)
    b = api.build_shards(download, out, keep_tables=[filt, dedup], samples_per_shard=4, engine="spark", spark=spark)

    lf, ld, lo = tmp_path / "filter.parquet", tmp_path / "dedup.parquet", tmp_path / "shards"
    api.filter_samples(local, lf, min_side=16)
    api.dedup_samples(local, ld, keep_tables=[lf])
    lb = api.build_shards(local, lo, keep_tables=[lf, ld], samples_per_shard=4)

    assert read_decisions(filt).equals(read_decisions(lf))
    assert read_decisions(dedup).equals(read_decisions(ld))
    assert storage.exists(storage.join(dedup, "_ccmb_table.json"))  # Spark writes parts, the marker last
    assert (b.samples, b.shards) == (lb.samples, lb.shards) and b.shards >= 2
    for p in shards.list_shards(lo):
        assert storage.read_bytes(storage.join(out, p.name)) == p.read_bytes(), p.name
    assert shards.read_manifest(out)["shards"] == shards.read_manifest(lo)["shards"]
