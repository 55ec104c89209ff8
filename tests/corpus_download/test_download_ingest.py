"""Input reading and normalisation for ``ccmb download`` (no network, no img2dataset)."""
from __future__ import annotations

import csv
import gzip
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from ccmb.corpus import ingest
from dl_helpers import write_jsonl, zero_record


def _rows(tmp_path, files, layout=None, **kw):
    layout = layout or ingest.Layout(mode="zero")
    res = ingest.normalize_inputs([p for p in ingest.resolve_inputs(files)], tmp_path / "norm", layout,
                                  samples_per_shard=kw.pop("samples_per_shard", 10), **kw)
    table = pa.concat_tables([pq.read_table(p) for p in res.parts])
    return res, table.to_pylist()


def test_formats_folders_globs_gz_and_case_insensitive_keys(tmp_path):
    recs = [zero_record(i, f"http://h/{i}.jpg") for i in range(6)]
    d = tmp_path / "in"
    write_jsonl(d / "a.jsonl", recs[:2])
    (d / "b.json").write_text(json.dumps([{k.upper(): v for k, v in r.items()} for r in recs[2:3]]), "utf-8")
    with gzip.open(d / "c.jsonl.gz", "wt", encoding="utf-8") as fh:
        fh.write(json.dumps({k.lower(): v for k, v in recs[3].items()}, ensure_ascii=False) + "\n")
    with open(d / "d.csv", "w", newline="", encoding="utf-8") as fh:
        w = csv.DictWriter(fh, fieldnames=list(recs[4]))
        w.writeheader()
        w.writerow(recs[4])
    pq.write_table(pa.Table.from_pylist([recs[5]]), d / "e.parquet")
    (d / "notes.txt").write_text("ignored: not an input format")

    res, rows = _rows(tmp_path, [d])
    assert res.rows == 6 and not res.refused
    assert [r["url"] for r in rows] == [f"http://h/{i}.jpg" for i in range(6)]
    r = rows[3]
    assert (r["title"], r["content"], r["query"], r["keywords"], r["image_key"], r["page_url"]) == (
        "标题3", "内容3", "查询3", "关键词3", "key-00003", "http://example.invalid/page/3")
    assert r["caption"] == "标题3" and r["source"].endswith("c.jsonl.gz")
    # a glob selects the same files in the same (sorted) order
    res2, rows2 = _rows(tmp_path, [str(d / "*.*")])
    assert [r["url"] for r in rows2] == [r["url"] for r in rows]
    # the caption field is configurable
    _, rows3 = _rows(tmp_path, [d / "a.jsonl"], layout=ingest.Layout(mode="zero", caption_field="query"))
    assert rows3[0]["caption"] == "查询0"


def test_bad_rows_are_kept_with_reasons(tmp_path):
    p = tmp_path / "bad.jsonl"
    write_jsonl(p, [zero_record(0, "http://h/0.jpg"), zero_record(1, "ftp://h/1.jpg"), zero_record(2, None),
                    zero_record(3, "file:///etc/passwd"), zero_record(0, "http://h/dup.jpg")])
    with open(p, "ab") as fh:
        fh.write(b'{"ImageUrl": "http://h/5.jpg", "Title": "\xff\xfe bad"}\n')
        fh.write(b'{"ImageUrl": "http://h/6.jpg", \n')
        fh.write(b'["not", "an", "object"]\n')
        fh.write(b"\n")  # blank lines are not rows
    res, rows = _rows(tmp_path, [p])
    assert res.rows == 8 and len(rows) == 8
    errors = [r[ingest.ERROR_COLUMN] for r in rows]
    assert errors[0] is None and rows[0]["url"] == "http://h/0.jpg"
    assert errors[1].startswith("unsupported URL scheme 'ftp'") and f"{p}:2" in errors[1]
    assert errors[2].startswith("missing ImageUrl") and f"{p}:3" in errors[2]
    assert "--allow-file-urls" in errors[3]
    assert errors[4].startswith("duplicate ImageKey 'key-00000'")
    assert errors[5].startswith("non-UTF-8 text") and f"{p}:6" in errors[5]
    assert errors[6].startswith("malformed JSON") and f"{p}:7" in errors[6]
    assert errors[7].startswith("malformed record") and f"{p}:8" in errors[7]
    # refused rows are never fetched: empty URL for img2dataset, the original kept for the parquet
    assert all(r["url"] == "" for r in rows[1:])
    assert rows[1][ingest.INPUT_URL_COLUMN] == "ftp://h/1.jpg"
    assert sum(res.refused.values()) == 7 and res.refused["malformed JSON"] == 1
    # file:// is accepted with the flag
    _, rows2 = _rows(tmp_path, [p], layout=ingest.Layout(mode="zero", allow_file_urls=True))
    assert rows2[3][ingest.ERROR_COLUMN] is None and rows2[3]["url"] == "file:///etc/passwd"
    # --strict: the first malformed line is fatal, named by file:line
    with pytest.raises(ingest.InputError, match=rf"{p}:6: non-UTF-8"):
        _rows(tmp_path, [p], strict=True)


def test_limit_parts_and_missing_input(tmp_path):
    p = write_jsonl(tmp_path / "a.jsonl", [zero_record(i, f"http://h/{i}.jpg") for i in range(25)])
    res = ingest.normalize_inputs([p], tmp_path / "n", ingest.Layout(mode="zero"), samples_per_shard=4,
                                  limit=13, part_rows=8)
    assert res.rows == 13 and [pq.read_metadata(x).num_rows for x in res.parts] == [8, 5]
    with pytest.raises(ingest.InputError, match="no such file"):
        ingest.resolve_inputs([tmp_path / "missing.jsonl"])
    with pytest.raises(ingest.InputError, match="matches no file"):
        ingest.resolve_inputs([str(tmp_path / "*.csv")])


def test_generic_url_lists_keep_other_columns(tmp_path):
    laion = tmp_path / "laion.parquet"
    pq.write_table(pa.Table.from_pylist([
        {"URL": "http://h/1.jpg", "TEXT": "一只猫", "WIDTH": 100, "similarity": 0.31, "SAMPLE_ID": 7, "Title": "猫"},
        {"URL": "http://h/2.jpg", "TEXT": "一只狗", "WIDTH": 80, "similarity": 0.29, "SAMPLE_ID": 7, "Title": "狗"},
    ]), laion)
    layout = ingest.Layout(mode="urls", url_col="url", caption_col="text", id_col="sample_id")
    res, rows = _rows(tmp_path, [laion], layout=layout)
    assert rows[0]["url"] == "http://h/1.jpg" and rows[0]["caption"] == "一只猫" and rows[0]["image_key"] == "7"
    assert rows[0]["input_width"] == "100" and rows[0]["similarity"] == "0.31"  # reserved name prefixed
    assert rows[0]["title"] == "猫"  # a column named like a metadata field fills it
    assert rows[1][ingest.ERROR_COLUMN].startswith("duplicate sample_id")
    assert "input_width" in res.columns and "similarity" in res.columns

    wukong = tmp_path / "wukong.csv"
    wukong.write_bytes("url,caption\nhttp://h/a.jpg,中文描述\nhttp://h/b.jpg,\"带,逗号\"\n".encode()
                      + b"http://h/c.jpg,\xc4\xe3\xba\xc3\n")  # GBK bytes: not UTF-8
    _, rows = _rows(tmp_path, [wukong], layout=ingest.Layout(mode="urls"))
    assert [r["caption"] for r in rows[:2]] == ["中文描述", "带,逗号"]
    assert rows[2][ingest.ERROR_COLUMN].startswith("non-UTF-8 text") and f"{wukong}:4" in rows[2][ingest.ERROR_COLUMN]


def test_reason_classes():
    assert ingest.reason_class("malformed JSON: Expecting value (column 3) (/a.jsonl:4)") == "malformed JSON"
    assert ingest.reason_class("duplicate ImageKey 'k1' (/a:5)") == "duplicate ImageKey"
    assert ingest.reason_class("HTTP Error 404: Not Found") == "HTTP Error 404"
    assert ingest.check_url("https://a/b.jpg") is None
    assert ingest.check_url("javascript:alert(1)").startswith("unsupported URL scheme 'javascript'")


def test_deep_and_overlong_json_lines_are_located_failures(tmp_path, monkeypatch):
    """A 2 KB line of 1,000 nested arrays used to abort the whole download with a RecursionError."""
    monkeypatch.setattr(ingest, "MAX_LINE_BYTES", 5000)
    src = tmp_path / "zero.jsonl"
    with open(src, "w", encoding="utf-8") as fh:
        fh.write(json.dumps(zero_record(0, "http://h/0.jpg")) + "\n")
        fh.write("[" * 1000 + "]" * 1000 + "\n")
        fh.write(json.dumps(zero_record(2, "http://h/2.jpg", Title="长" * 3000), ensure_ascii=False) + "\n")
        fh.write(json.dumps(zero_record(3, "http://h/3.jpg")) + "\n")
    refused_path = tmp_path / "refused.tsv"
    res, rows = _rows(tmp_path, [src], refused_path=refused_path, refused_examples=1)
    assert res.rows == 4 and [r["url"] for r in rows] == ["http://h/0.jpg", "", "", "http://h/3.jpg"]
    assert rows[1][ingest.ERROR_COLUMN] == f"malformed JSON: nested deeper than 64 levels ({src}:2)"
    assert rows[2][ingest.ERROR_COLUMN] == f"malformed JSON: line longer than 5000 bytes ({src}:3)"
    assert res.refused == {"malformed JSON": 2}
    assert res.refused_examples == [f"{src}:2: malformed JSON: nested deeper than 64 levels"]
    assert refused_path.read_text(encoding="utf-8").splitlines() == [
        f"{src}:2\tmalformed JSON: nested deeper than 64 levels", f"{src}:3\tmalformed JSON: line longer than 5000 bytes"]


def test_deeply_nested_json_array_file_is_one_failure(tmp_path):
    src = tmp_path / "zero.json"
    src.write_text("[" + "[" * 5000 + "]" * 5000 + "]", encoding="utf-8")
    res, rows = _rows(tmp_path, [src])
    assert res.rows == 1 and rows[0][ingest.ERROR_COLUMN].startswith("malformed JSON array: nested deeper than 64")
