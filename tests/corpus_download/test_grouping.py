"""Host groups: every row kept once, a host's rows in one group and in input order, shards cut per group."""
from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq

from ccmb.corpus import ingest
from ccmb.corpus.download import grouping


def _parts(tmp_path, urls, per_part):
    d = tmp_path / "input"
    d.mkdir()
    parts = []
    for k in range(0, len(urls), per_part):
        chunk = urls[k:k + per_part]
        table = pa.table({"url": [u if not u.startswith("!") else "" for u in chunk],
                          ingest.INPUT_URL_COLUMN: [u[1:] if u.startswith("!") else None for u in chunk],
                          "caption": [str(k + i) for i in range(len(chunk))]},
                         schema=pa.schema([("url", pa.string()), (ingest.INPUT_URL_COLUMN, pa.string()),
                                           ("caption", pa.string())]))
        parts.append(d / f"part-{len(parts):05d}.parquet")
        pq.write_table(table, parts[-1])
    return d, parts


def test_group_by_host_keeps_every_row_once_in_order(tmp_path, monkeypatch):
    monkeypatch.setattr(grouping, "BUFFER_ROWS", 7)  # spill often
    hosts = ["a.example", "B.example", "c.example:8080", "[2001:db8::1]", "d.example"]
    urls = [f"http://{hosts[i % 5] if i % 7 else hosts[0]}/img/{i}.jpg" for i in range(97)]
    urls[13] = "!http://d.example/refused.jpg"  # a row refused before download: grouped by its input URL
    d, parts = _parts(tmp_path, urls, 40)
    new_parts, lanes = grouping.group_by_host(parts, d, groups=3, samples_per_shard=10)
    assert len(new_parts) == len(lanes) and sorted(p.name for p in d.iterdir()) == [p.name for p in new_parts]
    rows = [(lane, r) for p, lane in zip(new_parts, lanes) for r in pq.read_table(p).to_pylist()]
    assert sorted(int(r["caption"]) for _, r in rows) == list(range(97))
    for p in new_parts:
        assert 1 <= pq.read_metadata(p).num_rows <= 10
    lane_of_host = {}
    for lane, r in rows:
        host = (r["url"] or r[ingest.INPUT_URL_COLUMN]).split("/")[2].lower().split(":8080")[0]
        assert lane_of_host.setdefault(host, lane) == lane  # a host in one group
    load = [sum(1 for g, _ in rows if g == lane) for lane in range(3)]
    assert max(load) - min(load) <= 20, load  # balanced by rows (a.example alone has 32)
    for lane in set(lanes):  # input order within a group
        order = [int(r["caption"]) for g, r in rows if g == lane]
        assert order == sorted(order)
    # shards of the groups interleave: the k-th shard of every group comes before any (k+1)-th
    names = [p.name for p in new_parts]
    assert names == sorted(names) and names[0].startswith("part-000000-")
    assert grouping.ShardLanes(tuple(lanes)).lane_of(len(lanes) + 5) < 0  # unknown shards are their own group


def test_hosts_are_placed_largest_first_into_the_lightest_group():
    counts = {"a": 50, "b": 30, "c": 20, "d": 20, "e": 10}
    placed = grouping.place_hosts(counts, 2)
    assert placed["a"] == 0 and placed["b"] == 1
    loads = [sum(n for h, n in counts.items() if placed[h] == g) for g in (0, 1)]
    assert sorted(loads) == [60, 70]
    assert grouping.place_hosts(counts, 2) == placed  # deterministic
    assert set(grouping.place_hosts(counts, 8).values()) == {0, 1, 2, 3, 4}  # one host per group when there is room
