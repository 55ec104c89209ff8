"""Engine conformance: every registered step gives the same result on every engine.

Steps: the filter, every dedup level of the registry (each alone, after the filter), the default levels
together, decontamination, the score threshold (``--scores``), and build-shards (keep-aware combine of
tables made independently, the shuffled plan, the written shards, a restart). Engines: in-process with one
bucket (the reference), in-process with 7 buckets and a tiny budget (every shuffle spills), and Spark in
local mode (marker ``spark``). The reference is also checked against what was planted, so agreeing on a
wrong answer fails too. This one suite replaces the per-step Spark parity tests.
"""
from __future__ import annotations

import json

import numpy as np
import pyarrow.parquet as pq
import pytest
from decontaminate_helpers import contaminated_download, eval_root
from scale_helpers import DARK_COPIED, DARK_SEEDS, write_planted
from semantic_helpers import planted_embeddings

from ccmb import shards as fmt
from ccmb.corpus import api
from ccmb.corpus.primitives.minhash import jaccard_sets, ngrams, normalize_texts
from ccmb.corpus.steps.build import BUILD_DIR, PLAN_DIR
from ccmb.corpus.steps.decontaminate import DecontaminationConfig
from ccmb.corpus.steps.filter import make_config
from ccmb.corpus.steps.levels import levels
from ccmb.corpus.steps.levels import semdedup
from ccmb.corpus.tables.decisions import decision_metadata, read_decisions
from ccmb.corpus.tables.folder import read_columns
from ccmb.corpus.tables.schema import CurationError
from ccmb.corpus.tables.writer import write_table

ENGINES = [pytest.param("local", id="local"), pytest.param("buckets", id="local-7-buckets"),
           pytest.param("spark", id="spark", marks=pytest.mark.spark)]
STEPS = ["filter", *[f"dedup-{name}" for name in levels()], "dedup-all", "decontaminate", "scores", "build"]
FILTER = dict(min_side=0, blocklist=["山山山"])


def _engine(engine: str, request) -> dict:
    if engine == "local":
        return {"engine": "local", "spill_buckets": 1}
    if engine == "buckets":
        return {"engine": "local", "memory_gb": 0.001, "spill_buckets": 7}
    return {"engine": "spark", "spark": request.getfixturevalue("spark")}


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    base = tmp_path_factory.mktemp("conformance")
    d = write_planted(base / "download")
    root = base / "eval"
    contaminated, labels = contaminated_download(base / "contaminated", eval_root(root))
    sem_dl, scores, sem_keys, copies = planted_embeddings(base / "semantic")
    filt = base / "filter.parquet"
    api.filter_samples(d, filt, **FILTER)
    return {"base": base, "download": d, "filter": filt, "eval": root, "contaminated": contaminated,
            "labels": labels, "semantic": (sem_dl, scores, sem_keys, copies)}


@pytest.fixture(scope="module")
def results():
    return {}


def _table(path):
    return read_decisions(path), decision_metadata(path)["kind"]


def _run(step: str, engine: str, inputs, request, tmp):
    kw = _engine(engine, request)
    d = inputs["download"]
    if step == "filter":
        api.filter_samples(d, tmp / "t.parquet", **FILTER, **kw)
        return _table(tmp / "t.parquet")
    if step.startswith("dedup-"):
        name = step[len("dedup-"):]
        if name == "semdedup":
            dl, scores, _, _ = inputs["semantic"]
            request.getfixturevalue("monkeypatch").setattr(semdedup, "KMEANS_SAMPLE", 50)  # sampled fit
            api.dedup_samples(dl, tmp / "t.parquet", levels=[name], semantic_scores=str(scores), semantic_eps=0.05,
                              semantic_clusters=6, **kw)
        else:
            lv = [] if name == "all" else [name]
            api.dedup_samples(d, tmp / "t.parquet", levels=lv, keep_tables=[inputs["filter"]], **kw)
        return _table(tmp / "t.parquet")
    if step == "decontaminate":
        summary, report = api.decontaminate(inputs["contaminated"], ["icr"], inputs["eval"], tmp / "t.parquet",
                                            config=DecontaminationConfig(drop_caption_matches=True), **kw)
        info = json.loads(decision_metadata(tmp / "t.parquet")["info"])
        assert info["report"] == report
        return _table(tmp / "t.parquet"), report
    if step == "scores":
        dl, scores, _, _ = inputs["semantic"]
        api.filter_samples(dl, tmp / "t.parquet", min_side=0, **kw)
        summary = api.apply_scores(tmp / "t.parquet", scores, keep_top_percent=50, **kw)
        return _table(tmp / "t.parquet"), summary.threshold
    if step == "build":
        return _build(inputs, kw, tmp)
    raise AssertionError(step)


def _build(inputs, kw, tmp):
    """Tables made independently (dedup of every level, a filter dropping every representative dedup kept),
    combined keep-aware into shuffled shards; then a lost shard is rewritten, the others skipped."""
    d = inputs["download"]
    dedup = api.dedup_table(d, api.dedup_config())
    reps = {r["duplicate_of"] for r in dedup.to_pylist() if r["duplicate_of"]}
    meta = read_columns(d, ["key", "caption"])
    block = sorted({c for k, c in zip(meta.column("key").to_pylist(), meta.column("caption").to_pylist()) if k in reps})
    tables = [tmp / "f.parquet", tmp / "d.parquet"]
    write_table(tables[0], api.filter_table(d, make_config(min_side=0, blocklist=block)),
                kind="filter", source=d, parts=2)
    write_table(tables[1], dedup, kind="dedup", source=d, parts=3)
    out = tmp / "shards"
    s = api.build_shards(d, out, keep_tables=tables, samples_per_shard=8, shuffle=True, seed=11, **kw)
    assert len(s.written) == s.shards > 1
    plan = read_decisions_plan(out)
    shas = {k: v["sha256"] for k, v in fmt.read_manifest(out)["shards"].items()}
    (out / "00001.tar").unlink()
    again = api.build_shards(d, out, keep_tables=tables, samples_per_shard=8, shuffle=True, seed=11, **kw)
    assert again.written == ["00001"] and len(again.skipped) == again.shards - 1
    assert {k: v["sha256"] for k, v in fmt.read_manifest(out)["shards"].items()} == shas
    kept = {smp.meta["source_key"] for tar in fmt.list_shards(out) for smp in fmt.iter_tar_samples(tar)}
    return (s.samples, s.shards, s.dropped, s.restored), plan, shas, (kept, reps, dedup)


def read_decisions_plan(out):
    plan = pq.read_table(out / BUILD_DIR / PLAN_DIR).select(["pos", "out_shard", "out_key", "key", "shard"])
    return plan.sort_by([("pos", "ascending")]).to_pylist()


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("step", STEPS)
def test_step_conforms(step, engine, inputs, results, request, tmp_path):
    got = _run(step, engine, inputs, request, tmp_path)
    if engine == "local":
        results[step] = got
        _check_planted(step, got, inputs)
        return
    if step not in results:
        results[step] = _run(step, "local", inputs, request, tmp_path / "reference")
    ref = results[step]
    if step == "build":
        assert got[:3] == ref[:3]  # counts, the plan row by row, byte-identical shards
        return
    if step in ("decontaminate", "scores"):
        assert got[1] == ref[1]  # the report / the threshold
        got, ref = got[0], ref[0]
    assert got[1] == ref[1]  # the kind
    a, b = ref[0], got[0]
    assert a.equals(b), [(x, y) for x, y in zip(a.to_pylist(), b.to_pylist()) if x != y][:5]


def _check_planted(step, got, inputs):
    """The reference finds what was planted (so every engine agreeing on a wrong answer still fails)."""
    if step == "build":
        (samples, shards, dropped, restored), plan, shas, (kept, reps, dedup) = got
        assert set(restored) >= {"duplicate_url", "duplicate_sha256", "duplicate_phash", "duplicate_caption"}
        assert kept and not kept & reps  # no removed representative comes back
        for reason in ("duplicate_url", "duplicate_sha256"):  # one copy per exact group survives
            members = {}
            for r in dedup.to_pylist():
                if r["reason"] == reason:
                    members.setdefault(r["duplicate_of"], set()).add(r["key"])
            assert all(len(m & kept) <= 1 for m in members.values())
        return
    if step == "decontaminate":
        (table, _), report = got
        k = inputs["labels"]
        rows = {r["key"]: r for r in table.to_pylist()}
        expect = {"exact0": "val0", "exact0b": "val0", "near1": "val1", "near1b": "val1", "near2": "val2",
                  "caption3": "val3", "caption3b": "val3", "caption4": "val4", "both4": "val4"}
        for label, image in expect.items():
            assert (rows[k[label]]["reason"], rows[k[label]]["duplicate_of"]) == ("eval_overlap",
                                                                                  f"icr/val/{image}.jpg"), label
        assert rows[k["broken"]]["reason"] == "undecodable_image"
        assert all(rows[k[f"distinct{j}"]]["keep"] for j in range(12))
        p = report["datasets"]["icr/val"]
        assert p["by_method"] == {"sha256": 2, "phash": 4} and p["images_with_copies"] == 4
        assert p["texts_with_copies"] == 2 and p["corpus_samples_copying_texts"] == 4
        assert report["undecodable"] == 1 and report["dropped"] == 10
        return
    if step == "scores":
        (table, kind), threshold = got
        reasons = table.column("reason").to_pylist()
        # every planted score is 0.5: ties at the threshold are all kept; the sample missing from the scores
        # file is not_scored (the one not downloaded keeps its earlier reason)
        assert kind == "filter" and threshold == 0.5 and "low_agreement" not in reasons
        assert reasons.count("not_scored") == 1 and reasons.count("not_downloaded") == 1
        return
    table, kind = got
    rows = {r["key"]: r for r in table.to_pylist()}
    reasons = {r["reason"] for r in rows.values()}
    for r in rows.values():  # every pointer names a kept row with a lower key
        if r["duplicate_of"]:
            assert rows[r["duplicate_of"]]["keep"] and r["duplicate_of"] < r["key"], r
    if step == "filter":
        assert kind == "filter" and reasons == {None, "blocklist", "not_downloaded"}
    elif step == "dedup-semdedup":
        _, _, keys, copies = inputs["semantic"]
        drops = {k: r["duplicate_of"] for k, r in rows.items() if r["reason"] == semdedup.REASON}
        expected = {keys[c]: keys[o] for c, o in copies.items()}
        expected[keys[120]] = keys[40]  # the chain x~y~z: y joins x; z stays, its only neighbour is dropped
        assert drops == expected
    elif step == "dedup-all":
        assert {"duplicate_url", "duplicate_sha256", "duplicate_phash", "duplicate_caption", "blocklist"} <= reasons
        _check_dark(rows, inputs)
    elif step.startswith("dedup-"):
        level = levels()[step[len("dedup-"):]]
        assert level.reason in reasons and kind == "dedup"
        if level.name == "phash":
            _check_dark(rows, inputs)
        if level.name == "caption":  # star groups: never chained beyond the threshold
            caps = dict(zip(*[read_columns(inputs["download"], ["key", "caption"]).column(c).to_pylist()
                              for c in ("key", "caption")]))

            def norm(t):
                return normalize_texts([t])[0].as_py()

            for r in rows.values():
                if r["reason"] == level.reason:
                    assert jaccard_sets(ngrams(norm(caps[r["key"]]), 3), ngrams(norm(caps[r["duplicate_of"]]), 3)) >= 0.8


def _check_dark(rows, inputs):
    """The second image check: different dark photos under one overlay caption (pHash candidates) are not
    merged; the re-encoded copy of one of them is."""
    urls = dict(zip(*[read_columns(inputs["download"], ["key", "url"]).column(c).to_pylist() for c in ("key", "url")]))
    key = {u.rsplit("/", 1)[1].split(".")[0]: k for k, u in urls.items() if "dark.example.com" in u}
    dark = {key[str(s)] for s in DARK_SEEDS}
    assert not [r for r in rows.values() if r["reason"] == "duplicate_phash" and r["key"] in dark], "merged"
    assert (rows[key["copy"]]["reason"], rows[key["copy"]]["duplicate_of"]) == ("duplicate_phash",
                                                                                key[str(DARK_COPIED)])


@pytest.mark.spark
def test_spark_refuses_repeated_keys_naming_the_files(inputs, spark, tmp_path):
    """An error a step raises on an executor comes back as the step's error, naming the files."""
    d = tmp_path / "dl"
    d.mkdir()
    src = inputs["download"]
    for name in ("00000", "00001"):
        for ext in (".tar", ".parquet", "_stats.json"):
            (d / f"{name}{ext}").write_bytes((src / f"{name}{ext}").read_bytes())
    t = pq.read_table(d / "00001.parquet")
    keys = t.column("key").to_pylist()
    keys[0] = pq.read_table(d / "00000.parquet").column("key")[0].as_py()
    pq.write_table(t.set_column(0, "key", [keys]), d / "00001.parquet")
    with pytest.raises(CurationError, match=r"not unique.*00000\.parquet, 00001\.parquet"):
        api.dedup_samples(d, tmp_path / "x.parquet", levels=["url"], engine="spark", spark=spark)
    assert not (tmp_path / "x.parquet").exists()


@pytest.mark.spark
def test_shuffle_partitions_sized_unless_set(spark, inputs):
    from ccmb.corpus.engines.spark import size_shuffle_partitions
    from ccmb.spark import AUTO_SHUFFLE_FLAG

    before = (spark.conf.get(AUTO_SHUFFLE_FLAG, "false"), spark.conf.get("spark.sql.shuffle.partitions"))
    try:
        spark.conf.set(AUTO_SHUFFLE_FLAG, "true")
        cores = spark.sparkContext.defaultParallelism
        assert size_shuffle_partitions(spark, 1000) == cores  # tiny input: one per core
        assert size_shuffle_partitions(spark, 10 * 128 << 20) == cores * -(-10 // cores)
        spark.conf.set(AUTO_SHUFFLE_FLAG, "false")
        spark.conf.set("spark.sql.shuffle.partitions", "37")
        assert size_shuffle_partitions(spark, 1 << 40) == 37  # the user's value is kept
    finally:
        spark.conf.set(AUTO_SHUFFLE_FLAG, before[0])
        spark.conf.set("spark.sql.shuffle.partitions", before[1])


def test_every_registered_level_is_a_step_here():
    assert {f"dedup-{n}" for n in levels()} <= set(STEPS) and np.all([lv.reason for lv in levels().values()])
