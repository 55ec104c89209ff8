"""The curation commands on a real Spark standalone cluster (``spark_cluster``: master and worker in their own
JVMs on 127.0.0.1): ``ccmb filter|dedup|decontaminate|build-shards --engine spark --spark-master spark://...``
run as driver subprocesses, and their tables and shards equal the in-process engine's. The executors are
separate JVMs with their own Python workers: they run the driver's ccmb (shipped by the session), never the
node's install."""
from __future__ import annotations

import hashlib
import io
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner
from PIL import Image, ImageEnhance

from ccmb import shards as fmt
from ccmb.synthetic import jpeg_bytes as _jpeg
from ccmb.cli import main

pytestmark = [pytest.mark.spark, pytest.mark.slow]

EVAL_TEXTS = ["一只橘色的猫趴在木头桌子上晒太阳", "傍晚时分海边的灯塔和归来的渔船", "雨后的城市街道上撑伞的行人"]
TABLE_COLUMNS = ["key", "keep", "reason", "duplicate_of"]
TIMEOUT_S = 600


def _image(seed: int, size=(256, 256)) -> Image.Image:
    """A smooth random colour field (an 8x8 grid of colours, bicubic)."""
    cells = np.random.default_rng(seed).integers(0, 256, (8, 8, 3), dtype=np.uint8)
    return Image.fromarray(cells).resize(size, Image.Resampling.BICUBIC)


def _corpus(base: Path):
    """An ICR val set of 3 images and a download folder over 4 tars with a case for every rule, level and
    matcher: small and blocked rows, URL/byte/pHash/caption duplicates, evaluation copies (exact, re-encoded,
    brighter, caption), an undecodable image, failures, distinct rows."""
    root = base / "eval"
    (root / "IQR_IQM_ICR_ICM_images").mkdir(parents=True)
    (root / "ICR" / "val").mkdir(parents=True)
    evals = []
    with open(root / "ICR" / "val" / "long_itr_val.json", "w", encoding="utf-8") as fh:
        for i, text in enumerate(EVAL_TEXTS):
            evals.append(_image(500 + i, (320, 240)))
            (root / "IQR_IQM_ICR_ICM_images" / f"val{i}.jpg").write_bytes(_jpeg(evals[i]))
            fh.write(json.dumps({"text": text, "image_path": f"images/val{i}.jpg"}, ensure_ascii=False) + "\n")
    rows = [(f"http://img.example.com/{i}.jpg", f"第{i}张普通的训练图片有自己的说明文字{i * 7919}", _jpeg(_image(i)))
            for i in range(16)]
    rows += [("https://IMG.example.com/3.jpg/", "网址重复的一行", _jpeg(_image(1003))),
             ("http://mirror.example.org/5.jpg", "同一字节的镜像", _jpeg(_image(5))),
             ("http://cdn.example.net/7s.jpg", "缩小重压缩的副本", _jpeg(_image(7).resize((230, 230)), 70)),
             ("http://text.example.com/a.jpg", "北京故宫博物院秋天的红墙与金色银杏树下游客如织", _jpeg(_image(2000))),
             ("http://text.example.com/b.jpg", "北京故宫博物院秋天的红墙与金色银杏树下游客如织！", _jpeg(_image(2001))),
             ("http://small.example.com/s.jpg", "一张太小的图片放在这里", _jpeg(_image(3000, (120, 120)))),
             ("http://block.example.com/b.jpg", "含有屏蔽词广告的图片说明", _jpeg(_image(3001))),
             ("http://c.example.com/e0.jpg", "网页上的图片甲", (root / "IQR_IQM_ICR_ICM_images" / "val0.jpg").read_bytes()),
             ("http://c.example.com/e1.jpg", "压缩过的副本", _jpeg(evals[1], 35)),
             ("http://c.example.com/e2.jpg", "调亮的副本", _jpeg(ImageEnhance.Brightness(evals[2]).enhance(1.2))),
             ("http://c.example.com/t2.jpg", EVAL_TEXTS[2] + "。", _jpeg(_image(3002))),
             ("http://c.example.com/broken.jpg", "坏掉的图片文件", b"\xff\xd8\xff\xe0 not really a jpeg"),
             ("http://dead.example.com/0.jpg", "下载失败", None), ("http://dead.example.com/1.jpg", "下载失败", None)]
    rows = [rows[i] for i in np.random.default_rng(0).permutation(len(rows))]
    download = base / "download"
    download.mkdir()
    per_shard = 8
    for s in range(0, len(rows), per_shard):
        shard = s // per_shard
        with fmt.ShardWriter(download, shard, source="test.jsonl") as w:
            for i, (url, caption, data) in enumerate(rows[s: s + per_shard]):
                key = fmt.make_key(shard, i, per_shard)
                meta = {"url": url, "caption": caption, "title": caption, "key": key}
                if data is None:
                    w.write_failure(meta, "failed_to_download", "HTTP 404")
                    continue
                try:
                    width, height = Image.open(io.BytesIO(data)).size
                except Exception:
                    width, height = 256, 256
                meta.update(width=width, height=height, original_width=width, original_height=height)
                w.write(key, data, caption, meta)
    (base / "blocklist.txt").write_text("屏蔽词\n", encoding="utf-8")
    # a takedown list for build-shards --blocklist: one image by MD5, one URL, one domain
    (base / "takedown.txt").write_text(f"{hashlib.md5(_jpeg(_image(11))).hexdigest()}\nhttp://img.example.com/9.jpg\n"
                                       "mirror.example.org\n", encoding="utf-8")
    return download, root, base / "blocklist.txt"


def _commands(download: Path, root: Path, blocklist: Path, out: Path, spark_args):
    """The four commands (filter, dedup, decontaminate, build-shards) writing under ``out``."""
    t = {name: str(out / f"{name}.parquet") for name in ("filter", "dedup", "decon")}
    return [
        ["filter", "--input", str(download), "--output", t["filter"], "--min-side", "200",
         "--blocklist", str(blocklist), *spark_args],
        ["dedup", "--input", str(download), "--output", t["dedup"], "--keep", t["filter"], *spark_args],
        ["decontaminate", "--input", str(download), "--against", "icr", "--root", str(root), "--output", t["decon"],
         "--drop-caption-matches", *spark_args],
        ["build-shards", "--input", str(download), "--output", str(out / "shards"), "--keep", t["filter"],
         "--keep", t["dedup"], "--keep", t["decon"], "--samples-per-shard", "6", "--shuffle", "--seed", "3",
         "--blocklist", str(blocklist.parent / "takedown.txt"), *spark_args],
    ]


def _table(path: str):
    """A decision table (a file, or a folder of parts) as sorted rows of its decision columns."""
    table = pq.read_table(path, columns=TABLE_COLUMNS)
    return sorted(table.to_pylist(), key=lambda r: r["key"])


def _shards(folder: Path):
    return {k: v["sha256"] for k, v in fmt.read_manifest(folder)["shards"].items()}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return _corpus(tmp_path_factory.mktemp("cluster-corpus"))


def test_executors_run_the_drivers_ccmb(spark_cluster, tmp_path):
    """A driver on the cluster: its tasks run in an executor under the worker's work dir (another JVM, not
    the driver's), importing ccmb from the archive the session shipped, not from the node's install."""
    script = textwrap.dedent(f"""
        import json, os
        import ccmb
        from ccmb.spark import get_spark_session
        session = get_spark_session({spark_cluster.master!r}, conf={spark_cluster.conf!r})
        def probe(_):
            import ccmb.corpus.primitives.phash as phash
            return [phash.__file__, os.getcwd(), os.getpid()]
        got = session.sparkContext.parallelize([0], 1).map(probe).collect()[0]
        print(json.dumps({{"driver": os.getpid(), "driver_ccmb": ccmb.__file__, "executor": got}}))
        session.stop()
    """)
    done = subprocess.run([sys.executable, "-c", script], env=spark_cluster.driver_env(), capture_output=True,
                          text=True, timeout=TIMEOUT_S)
    assert done.returncode == 0, done.stderr[-3000:]
    out = json.loads(done.stdout.strip().splitlines()[-1])
    module, cwd, pid = out["executor"]
    assert Path(cwd).resolve().is_relative_to(spark_cluster.work_dir.resolve()), cwd
    assert pid != out["driver"]
    assert module.replace("\\", "/").endswith("ccmb.zip/ccmb/corpus/primitives/phash.py"), module


def test_commands_on_the_cluster_equal_in_process(corpus, spark_cluster, tmp_path):
    download, root, blocklist = corpus
    runner = CliRunner()
    for args in _commands(download, root, blocklist, tmp_path / "local", []):
        res = runner.invoke(main, args)
        assert res.exit_code == 0, (args[0], res.output)
    local = tmp_path / "local"
    reasons = {r["reason"] for name in ("filter", "dedup", "decon") for r in _table(str(local / f"{name}.parquet"))}
    assert {"too_small", "blocklist", "not_downloaded", "duplicate_url", "duplicate_sha256", "duplicate_phash",
            "duplicate_caption", "eval_overlap", "undecodable_image"} <= reasons, reasons

    remote = tmp_path / "cluster"
    remote.mkdir()
    for args in _commands(download, root, blocklist, remote, spark_cluster.cli_args()):
        done = subprocess.run([sys.executable, "-m", "ccmb", *args], env=spark_cluster.driver_env(),
                              capture_output=True, text=True, timeout=TIMEOUT_S)
        assert done.returncode == 0, (args[0], done.stdout[-2000:], done.stderr[-3000:])
    for name in ("filter", "dedup", "decon"):
        assert (remote / f"{name}.parquet").is_dir(), name  # written by the executors, as parts
        assert _table(str(remote / f"{name}.parquet")) == _table(str(local / f"{name}.parquet")), name
    assert _shards(remote / "shards") == _shards(local / "shards")
    assert len(_shards(local / "shards")) > 1
    dropped = [fmt.read_manifest(out / "shards")["dropped"] for out in (local, remote)]
    assert dropped[0] == dropped[1]
    assert {k: v for k, v in dropped[0].items() if k.startswith("blocklist_")} == {
        "blocklist_md5": 1, "blocklist_url": 1, "blocklist_domain": 1}
