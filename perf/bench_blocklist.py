"""The takedown-list step (:func:`ccmb.blocklist.blocked`, run by ``ccmb build-shards --blocklist`` on every
batch of a download's rows) against the plain reference: every row's URLs normalised and hosts parsed in
Python (what the step did before it was vectorised), on one batch of synthetic rows, side by side.

Rows: ``--rows`` (default 262144, one streamed batch) with an MD5, an image URL on one of 5000 hosts and a page
URL on one of 300 hosts; the list: 10000 MD5s, 10000 URLs (a quarter written in another case with a default
port and a fragment, which must still match), 1000 domains. Prints each implementation's median of
``--repeat`` runs, the ratio, and that both give the same reason for every row.

    .venv/bin/python perf/bench_blocklist.py [--rows 262144] [--repeat 5]
"""
from __future__ import annotations

import argparse
import hashlib
import statistics
import tempfile
import time
from pathlib import Path

import pyarrow as pa

from ccmb import blocklist as bl


def reference(batch: pa.Table, b: bl.Blocklist):
    """Per row, the first reason in the step's order, every value parsed in Python."""
    out = [None] * batch.num_rows
    for name in bl.HASH_COLUMNS:
        if name in batch.column_names:
            for i, v in enumerate(batch.column(name).to_pylist()):
                if out[i] is None and v:
                    if v.lower() in b.md5:
                        out[i] = bl.REASON_CODES["md5"]
                    elif v.lower() in b.sha256:
                        out[i] = bl.REASON_CODES["sha256"]
    for name in bl.URL_COLUMNS:
        if name in batch.column_names:
            values = batch.column(name).to_pylist()
            for i, v in enumerate(values):
                if out[i] is None and v and bl.normalize_url(v) in b.urls:
                    out[i] = bl.REASON_CODES["url"]
            for i, v in enumerate(values):
                if out[i] is None and v and b.match_host(bl.host_of(v)):
                    out[i] = bl.REASON_CODES["domain"]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=1 << 18)
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()
    n = args.rows
    batch = pa.table({"key": [str(i) for i in range(n)],
                      "md5": [hashlib.md5(str(i).encode()).hexdigest() for i in range(n)],
                      "url": [f"http://h{i % 5000}.example.com/img/{i}.jpg" for i in range(n)],
                      "page_url": [f"http://p{i % 300}.example.net/page/{i % 977}" for i in range(n)]})
    lines = [hashlib.md5(str(i * 7).encode()).hexdigest() for i in range(10000)]
    lines += [(f"HTTP://H{i * 13 % 5000}.Example.com:80/img/{i * 13}.jpg#x" if i % 4 == 0 else
               f"http://h{i * 13 % 5000}.example.com/img/{i * 13}.jpg") for i in range(10000)]
    lines += [f"d{i}.example.org" for i in range(999)] + ["p42.example.net"]
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "takedown.txt"
        path.write_text("\n".join(lines) + "\n")
        b = bl.Blocklist.load(path)

    def median(fn):
        times, result = [], None
        for _ in range(args.repeat):
            t = time.perf_counter()
            result = fn()
            times.append(time.perf_counter() - t)
        return statistics.median(times), result

    t_ref, ref = median(lambda: reference(batch, b))
    t_step, got = median(lambda: bl.blocked(batch, b, codes=True).to_pylist())
    counts = {r: got.count(r) for r in bl.REASON_CODES.values()}
    print(f"{n} rows, list of {len(b)} entries; dropped {counts}")
    print(f"reference (Python per row)   median {t_ref * 1000:8.0f} ms")
    print(f"blocked() (vectorised)       median {t_step * 1000:8.0f} ms   ratio {t_step / t_ref:.2f}x")
    print(f"same reason for every row: {got == ref}")
    if got != ref:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
