"""Group a download's input by host, so that each host is downloaded by one worker at a time.

img2dataset cuts the input into shards of consecutive rows and runs shards in parallel, so one host's URLs
land in many workers at once and per-worker pacing would multiply. :func:`group_by_host` rewrites the
normalised input into *host groups*: every row of a host goes to the same group; hosts are placed by their row
counts, largest first, each into the group with the fewest rows so far (ties by a stable hash of the host), so
the groups carry about the same work; each group's rows keep their input order and are cut into shards of their
own (one part file per shard, named so that the groups' shards interleave). The distributors (:mod:`ccmb.corpus.download.glue`) then run at most one shard of
a group at a time, so a host's requests come from one worker process, and its per-host limits hold for the
whole run (on a Spark cluster too: one task per group).

Keys follow the grouped order (each row keeps its input fields; the parquet maps key -> URL). Memory: one count
per distinct host (~100 bytes each), and rows spilled per group in Arrow files under a bounded in-memory buffer
(:data:`BUFFER_ROWS`).
"""
from __future__ import annotations

import hashlib
import heapq
import shutil
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Sequence, Tuple

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from ... import atomic
from .. import ingest

#: Rows buffered in memory across all groups before the largest group's buffer is spilled.
BUFFER_ROWS = 1 << 20
MAX_GROUPS = 4096
_HOST_RE = r"^[A-Za-z][A-Za-z0-9+.-]*://(?:[^@/?#]*@)?(?P<host>\[[^\]]*\]|[^:/?#\[\]]*)"


def group_of(host: str, groups: int) -> int:
    """The group of ``host`` (lower case): a stable hash, the same on every machine and run."""
    return int.from_bytes(hashlib.blake2b(host.encode("utf-8"), digest_size=8).digest(), "big") % groups


def hosts_of(urls: pa.Array) -> pa.Array:
    """The lower-case host of each URL ("" when it has none)."""
    return pc.fill_null(pc.utf8_lower(pc.struct_field(pc.extract_regex(pc.fill_null(urls, ""), _HOST_RE), [0])), "")


def place_hosts(counts: Dict[str, int], groups: int) -> Dict[str, int]:
    """Each host's group: largest hosts first, each into the group with the fewest rows so far (ties: the lower
    group); hosts of equal size in the order of their stable hash. Deterministic for the same counts."""
    heap = [(0, g) for g in range(groups)]
    placed: Dict[str, int] = {}
    for host in sorted(counts, key=lambda h: (-counts[h], group_of(h, 1 << 62), h)):
        load, g = heapq.heappop(heap)
        placed[host] = g
        heapq.heappush(heap, (load + counts[host], g))
    return placed


def _row_urls(batch) -> pa.Array:
    urls = batch.column("url")
    if ingest.INPUT_URL_COLUMN in batch.schema.names:  # a refused row's URL: where it would have gone
        urls = pc.if_else(pc.equal(pc.fill_null(urls, ""), ""), batch.column(ingest.INPUT_URL_COLUMN), urls)
    return urls


@dataclass(frozen=True)
class ShardLanes:
    """The host group of each shard id (shards are numbered in part-file order)."""

    lanes: Tuple[int, ...]
    first: int = 0  # shard id of lanes[0]

    def lane_of(self, shard_id: int) -> int:
        i = shard_id - self.first
        return self.lanes[i] if 0 <= i < len(self.lanes) else -1 - shard_id


def group_by_host(parts: Sequence[Path], out_dir: Path, groups: int, samples_per_shard: int) -> Tuple[List[Path], List[int]]:
    """Rewrite the normalised ``parts`` (input order) into one part per shard, grouped by host; returns the new
    parts (in shard order) and each shard's group. ``out_dir`` is replaced."""
    if not 1 <= groups <= MAX_GROUPS:
        raise ValueError(f"host groups must be between 1 and {MAX_GROUPS}, got {groups}")
    spill = out_dir.parent / (out_dir.name + ".grouping")
    shutil.rmtree(spill, ignore_errors=True)
    spill.mkdir(parents=True)
    buffers: Dict[int, List[pa.RecordBatch]] = {}
    buffered: Dict[int, int] = {}
    spilled: Dict[int, List[Path]] = {}

    def spill_group(g: int) -> None:
        batches = buffers.pop(g, [])
        buffered.pop(g, None)
        if not batches:
            return
        path = spill / f"g{g:05d}-{len(spilled.get(g, [])):06d}.arrow"
        with pa.OSFile(str(path), "wb") as sink, pa.ipc.new_file(sink, batches[0].schema) as w:
            for b in batches:
                w.write_batch(b)
        spilled.setdefault(g, []).append(path)

    counts: Counter = Counter()
    for part in parts:  # rows per host, to balance the groups
        for batch in pq.ParquetFile(part).iter_batches(batch_size=65536, columns=_url_columns(part)):
            for row in pc.value_counts(hosts_of(_row_urls(batch))).to_pylist():
                counts[row["values"]] += int(row["counts"])
    placed = place_hosts(counts, groups)
    del counts
    total = 0
    for part in parts:
        for batch in pq.ParquetFile(part).iter_batches(batch_size=65536):
            hosts = hosts_of(_row_urls(batch))
            uniq = pc.unique(hosts)
            ids = pc.take(pa.array([placed[h] for h in uniq.to_pylist()], pa.int32()), pc.index_in(hosts, uniq))
            for g in pc.unique(ids).to_pylist():
                rows = batch.filter(pc.equal(ids, g))
                buffers.setdefault(g, []).append(rows)
                buffered[g] = buffered.get(g, 0) + rows.num_rows
                total += rows.num_rows
            while total > BUFFER_ROWS:
                largest = max(buffered, key=buffered.get)
                total -= buffered[largest]
                spill_group(largest)
    for g in list(buffers):
        spill_group(g)
    tmp_out = out_dir.parent / (out_dir.name + ".grouped")
    shutil.rmtree(tmp_out, ignore_errors=True)
    tmp_out.mkdir(parents=True)
    named: List[Tuple[str, int]] = []
    for g in sorted(spilled):
        pending: List[pa.Table] = []
        count = chunk = 0
        for path in spilled[g]:
            with pa.OSFile(str(path), "rb") as src:
                pending.append(pa.ipc.open_file(src).read_all())
            count += pending[-1].num_rows
            while count >= samples_per_shard:
                table = pa.concat_tables(pending)
                named.append(_write_part(tmp_out, table.slice(0, samples_per_shard), g, chunk))
                chunk += 1
                rest = table.slice(samples_per_shard)
                pending, count = ([rest] if rest.num_rows else []), rest.num_rows
        if count:
            named.append(_write_part(tmp_out, pa.concat_tables(pending), g, chunk))
    shutil.rmtree(spill, ignore_errors=True)
    shutil.rmtree(out_dir, ignore_errors=True)
    tmp_out.rename(out_dir)
    named.sort()
    return [out_dir / n for n, _ in named], [g for _, g in named]


def _url_columns(part: Path) -> List[str]:
    names = pq.read_schema(part).names
    return [c for c in ("url", ingest.INPUT_URL_COLUMN) if c in names]


def _write_part(folder: Path, table: pa.Table, group: int, chunk: int) -> Tuple[str, int]:
    """A group's ``chunk``-th shard; the name sorts every group's k-th shard together: the groups interleave."""
    name = f"part-{chunk:06d}-{group:05d}.parquet"
    with atomic.atomic_open(folder / name, "wb") as fh:
        pq.write_table(table, fh)
    return name, group
