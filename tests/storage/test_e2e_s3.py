"""End to end on object storage (the S3 API server on 127.0.0.1): ``download`` (from a loopback image server)
-> ``filter`` -> ``dedup`` -> ``build-shards`` -> ``verify`` -> a few training steps, every path an ``s3://``
URL, and the same run on local disk: equal download rows, equal decision tables, byte-identical shards, equal
manifests (modulo paths) and equal training steps. Plus what object storage must refuse: a foreign output,
a second writer, a partial table."""
from __future__ import annotations

import io
import os
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "corpus_download"))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "train"))
from dl_helpers import write_jsonl, zero_record  # noqa: E402
from train_helpers import write_vocab  # noqa: E402

from ccmb import outdir, shards, storage  # noqa: E402
from ccmb.corpus import api  # noqa: E402
from ccmb.corpus import download as dl  # noqa: E402
from ccmb.corpus.tables.decisions import PartitionError, read_decisions  # noqa: E402
from ccmb.corpus.tables.folder import read_columns  # noqa: E402
from ccmb.corpus.tables.schema import CurationError  # noqa: E402
from ccmb.synthetic import serve_folder  # noqa: E402

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]
ROOT = Path(__file__).resolve().parents[2]
N_IMAGES = 24
ROW_COLUMNS = ["key", "status", "url", "caption", "width", "height", "error_message"]


def _image(i: int) -> bytes:
    """A distinct picture per index (bands of colours), 64x48."""
    img = Image.new("RGB", (64, 48), ((53 * i) % 256, (97 * i) % 256, (29 * i) % 256))
    for x in range(0, 64, 8):
        img.paste(((11 * i + 7 * x) % 256, (5 * x) % 256, (3 * i * x) % 256), (x, (i * 3) % 40, x + 4, 48))
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=92)
    return buf.getvalue()


def _caption(i: int) -> str:
    """A distinct Chinese caption per index (no near-duplicate captions among distinct images)."""
    return "".join(chr(0x4E00 + (i * 7919 + k * 104729) % 20000) for k in range(10))


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    """A loopback image server and a Zero-format input list: 24 images, an exact copy under a second URL, a
    repeated URL, and a 404."""
    root = tmp_path_factory.mktemp("e2e-site")
    (root / "img").mkdir()
    for i in range(N_IMAGES):
        (root / "img" / f"{i}.jpg").write_bytes(_image(i))
    (root / "img" / "copy-of-3.jpg").write_bytes(_image(3))
    with serve_folder(root) as base:
        records = [zero_record(i, f"{base}/img/{i}.jpg", Title=_caption(i)) for i in range(N_IMAGES)]
        records.append(zero_record(100, f"{base}/img/copy-of-3.jpg", Title=_caption(3)))
        records.append(zero_record(101, f"{base}/img/5.jpg", Title=_caption(5)))
        records.append(zero_record(102, f"{base}/img/missing.jpg", Title=_caption(102)))
        yield write_jsonl(root / "zero.jsonl", records)


def _pipeline(src: Path, base, vocab: Path, run_dir: Path):
    """The whole pipeline with every corpus path under ``base`` (a local folder or an s3:// URL)."""
    download = storage.join(base, "download")
    summary = dl.download([src], download, processes=1, threads=4, image_size=48, timeout=5, retries=0,
                          samples_per_shard=10, allow_private=True)
    assert summary.complete and summary.successes == N_IMAGES + 2, summary.report()
    filt, dedup, out = storage.join(base, "filter.parquet"), storage.join(base, "dedup"), storage.join(base, "shards")
    f = api.filter_samples(download, filt, min_side=16, min_text_len=2)
    d = api.dedup_samples(download, dedup, keep_tables=[filt], parts=2)
    b = api.build_shards(download, out, keep_tables=[filt, dedup], samples_per_shard=8)
    from models.train.config import LossConfig, TrainConfig
    from models.train.pretrain import pretrain

    cfg = TrainConfig(losses=LossConfig(queue_size=8), steps=2, batch_size=4, log_every=1, save_every=1,
                      num_workers=1, shuffle_buffer=8)
    t = pretrain("r2d2-tiny", str(out), run_dir, cfg, tokenizer_path=vocab)
    return {"download": download, "filter": filt, "dedup": dedup, "shards": out, "summaries": (f, d, b), "train": t}


def _rows(download):
    return read_columns(download, ROW_COLUMNS).select(ROW_COLUMNS)


def test_pipeline_on_s3_equals_the_local_one(site, s3_url, tmp_path):
    vocab = write_vocab(tmp_path / "tok")
    local = _pipeline(site, tmp_path / "local", vocab, tmp_path / "run-local")
    remote = _pipeline(site, s3_url, vocab, tmp_path / "run-s3")
    # every shard's stats file is on S3 (a URL taken for a local path would write ./s3:/... instead)
    from ccmb import storage

    stats = storage.glob(storage.join(s3_url, "download"), "[0-9]*_stats.json")
    assert len(stats) == len(storage.glob(storage.join(str(tmp_path / "local"), "download"), "[0-9]*_stats.json"))
    assert stats and not (Path.cwd() / "s3:").exists()

    # the download folder: the same rows (successes, the 404, the input duplicate), on S3 under the URL
    assert _rows(local["download"]).equals(_rows(remote["download"]))
    names = storage.listdir(remote["download"])
    assert {"00000.tar", "00000.parquet", "00000_stats.json", "manifest.json", "_ccmb", outdir.OWNER_FILE} <= set(names)
    assert not [n for n in names if n.startswith("_tmp") or storage.TMP_MARK in n]

    # decision tables: equal, column by column; the dedup table is a folder of parts with its marker
    for t in ("filter", "dedup"):
        assert read_decisions(local[t]).equals(read_decisions(remote[t])), t
    fl, dl_, bl = local["summaries"]
    fr, dr, br = remote["summaries"]
    assert (fl.dropped, dl_.dropped, bl.samples, bl.shards) == (fr.dropped, dr.dropped, br.samples, br.shards)
    # the copy under a second URL and the repeated URL
    assert dr.dropped.get("duplicate_url", 0) >= 1 and dr.dropped.get("duplicate_sha256", 0) >= 1, dr.dropped
    assert storage.exists(storage.join(remote["dedup"], "_ccmb_table.json"))

    # shards: byte-identical tars, equal sizes and manifests modulo paths; verify passes on the URL (CLI)
    tars = [storage.name(p) for p in shards.list_shards(remote["shards"])]
    assert tars == [p.name for p in shards.list_shards(local["shards"])] and len(tars) == br.shards >= 2
    for n in tars:
        assert storage.read_bytes(storage.join(remote["shards"], n)) == (Path(local["shards"]) / n).read_bytes(), n
    assert shards.read_sizes(remote["shards"]) == shards.read_sizes(local["shards"])
    ml, mr = shards.read_manifest(local["shards"]), shards.read_manifest(remote["shards"])
    assert ml["shards"] == mr["shards"]
    assert [e["fingerprint"] for e in ml["provenance"]["decision_tables"]] != [] and \
        [e["path"] for e in mr["provenance"]["decision_tables"]] == [str(remote["filter"]), str(remote["dedup"])]
    res = subprocess.run([sys.executable, "-m", "ccmb", "verify", str(remote["shards"])], capture_output=True,
                         text=True, env=dict(os.environ, PYTHONPATH=str(ROOT)), timeout=120)
    assert res.returncode == 0, res.stdout + res.stderr

    # training: the same steps from the S3 shards as from the local ones
    a, b = local["train"], remote["train"]
    assert a.steps == b.steps == 2
    for k in ("loss", "gcpr", "fgr", "tgd", "fgd"):
        assert a.last_log[k] == b.last_log[k], k

    # a rerun resumes: nothing is rewritten
    again = api.build_shards(remote["download"], remote["shards"], keep_tables=[remote["filter"], remote["dedup"]],
                             samples_per_shard=8)
    assert again.written == [] and len(again.skipped) == br.shards


def test_object_storage_refuses_foreign_busy_and_partial_outputs(site, s3_url, tmp_path):
    src_local = tmp_path / "dl"
    dl.download([site], src_local, processes=1, threads=4, image_size=48, timeout=5, retries=0,
                samples_per_shard=10, allow_private=True)
    download = storage.join(s3_url, "download")
    for n in storage.listdir(src_local):
        p = src_local / n
        if p.is_file():
            storage.write_bytes(storage.join(download, n), p.read_bytes())

    # a foreign prefix is never written into
    foreign = storage.join(s3_url, "mine")
    storage.write_text(storage.join(foreign, "notes.txt"), "a user's file")
    with pytest.raises(outdir.OutputFolderError, match="notes.txt"):
        api.build_shards(download, foreign, keep_tables=[], samples_per_shard=8)
    with pytest.raises(CurationError, match="not a decision table"):
        api.filter_samples(download, foreign)
    assert storage.listdir(foreign) == ["notes.txt"]
    # an output inside the input prefix is refused
    with pytest.raises(outdir.OutputFolderError, match="inside the input"):
        api.build_shards(download, storage.join(download, "shards"), samples_per_shard=8)

    # one writer: a held lock object refuses a second run, naming the holder
    out = storage.join(s3_url, "shards")
    filt = storage.join(s3_url, "filter.parquet")
    api.filter_samples(download, filt, min_side=16)
    with outdir.FolderLock(out, "ccmb build-shards (the other run)"):
        with pytest.raises(outdir.OutputFolderError, match="the other run"):
            api.build_shards(download, out, keep_tables=[filt], samples_per_shard=8)
    # a lock left by a killed run of this host is taken over (its pid is gone)
    proc = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    storage.write_json(storage.join(out, outdir.LOCK_FILE),
                       {"pid": int(proc.stdout), "host": os.uname().nodename, "command": "killed",
                        "started": "then"})
    api.build_shards(download, out, keep_tables=[filt], samples_per_shard=8)
    assert not storage.exists(storage.join(out, outdir.LOCK_FILE))
    assert shards.read_manifest(out)["total_samples"] > 0

    # a partitioned table whose marker is missing (a killed job) is refused naming it, and a rerun replaces it
    table = storage.join(s3_url, "dedup")
    api.dedup_samples(download, table, keep_tables=[filt], parts=2)
    whole = read_decisions(table)
    storage.remove(storage.join(table, "_ccmb_table.json"))
    with pytest.raises(PartitionError, match="partially written"):
        read_decisions(table)
    api.dedup_samples(download, table, keep_tables=[filt], parts=3)
    assert read_decisions(table).equals(whole)
    assert len([n for n in storage.listdir(table) if n.startswith("part-")]) == 3

    # a damaged shard (a killed or tampered upload) no longer matches its record: rewritten, the rest kept
    first = storage.join(out, "00000.tar")
    good = storage.read_bytes(first)
    storage.write_bytes(first, good[: len(good) // 2])
    again = api.build_shards(download, out, keep_tables=[filt], samples_per_shard=8)
    assert again.written == ["00000"] and storage.read_bytes(first) == good
