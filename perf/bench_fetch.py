"""Fetch layer on a loopback server, side by side with baselines (medians):

1. download throughput: ``ccmb.fetch.http.download`` vs a plain ``requests`` streaming copy (the baseline);
2. resume after a kill at 60 %: bytes the second attempt transfers, ours (Range) vs starting over;
3. checkpoint check: reading every key and shape (``read_checkpoint_shapes``, memory-mapped) vs a full
   ``torch.load(weights_only=True)``, on a synthetic checkpoint with the official r2d2-vitb16 key list.

    .venv/bin/python perf/bench_fetch.py --mb 200 --repeats 3
"""
from __future__ import annotations

import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import click

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "fetch"))


def _median_time(fn, repeats):
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


@click.command()
@click.option("--mb", type=int, default=200, show_default=True, help="Size of the served file.")
@click.option("--repeats", type=int, default=3, show_default=True)
@click.option("--ckpt-dtype", type=click.Choice(["float16", "float32"]), default="float16", show_default=True,
              help="dtype of the synthetic r2d2-vitb16 checkpoint (float16: ~0.5 GB).")
def main(mb: int, repeats: int, ckpt_dtype: str) -> None:
    import requests
    import torch
    from fetch_helpers import LoopbackServer, Served

    from ccmb.fetch import http, read_checkpoint_shapes
    from models import hub

    data = os.urandom(mb << 20)
    with tempfile.TemporaryDirectory() as tmp, LoopbackServer() as server:
        tmp = Path(tmp)
        server.files["/f.bin"] = Served(data)
        url = server.base + "/f.bin"

        def baseline():
            with requests.get(url, stream=True) as r, open(tmp / "base.bin", "wb") as fh:
                for chunk in r.iter_content(1 << 16):
                    fh.write(chunk)

        def ours():
            (tmp / "ours.bin").unlink(missing_ok=True)
            http.download(url, tmp / "ours.bin")

        t_base, t_ours = _median_time(baseline, repeats), _median_time(ours, repeats)
        print(f"download {mb} MiB loopback   baseline requests: {mb / t_base:7.0f} MiB/s   "
              f"ccmb.fetch: {mb / t_ours:7.0f} MiB/s   ratio {t_base / t_ours:.2f}x")

        # resume: a killed transfer left 60 % in the .part file
        cut = int(len(data) * 0.6)
        dest = tmp / "resume.bin"
        http.part_path(dest).write_bytes(data[:cut])
        t0 = time.perf_counter()
        _, resumed = http.download(url, dest)
        t_resume = time.perf_counter() - t0
        assert dest.read_bytes() == data and resumed == cut
        sent_ours = len(data) - resumed
        print(f"resume after a kill at 60%   starting over: {len(data) >> 20} MiB   ccmb.fetch: "
              f"{sent_ours >> 20} MiB transferred ({t_resume:.2f} s)   ratio {len(data) / sent_ours:.2f}x fewer bytes")

        dtype = getattr(torch, ckpt_dtype)
        keys = hub.official_keys()["r2d2-vitb16"]
        state = {k: torch.zeros(shape, dtype=dtype) for k, shape in keys.items()}
        ckpt = tmp / "ckpt.pth"
        torch.save({"model": state}, ckpt)
        del state
        size_gb = ckpt.stat().st_size / 2 ** 30

        def full():
            obj = torch.load(ckpt, map_location="cpu", weights_only=True)
            return {k: tuple(v.shape) for k, v in obj["model"].items()}

        t_full = _median_time(full, repeats)
        t_keys = _median_time(lambda: read_checkpoint_shapes(ckpt), repeats)
        assert read_checkpoint_shapes(ckpt) == full()
        print(f"keys+shapes of a {size_gb:.2f} GB r2d2-vitb16 checkpoint ({len(keys)} keys)   full torch.load: "
              f"{t_full:.2f} s   ccmb.fetch (mmap): {t_keys:.3f} s   ratio {t_full / t_keys:.1f}x")


if __name__ == "__main__":
    main()
