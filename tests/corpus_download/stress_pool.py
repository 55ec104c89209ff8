"""Run the download shape that used to hang (32 rows, 2 per shard, 2 processes: 16 shards) N times.

Each run is ``ccmb download zero`` in a subprocess under a wall-clock limit against a loopback image
server; a run counts as finished when it exits 0 with its summary and ``manifest.json`` is written.

    .venv/bin/python tests/corpus_download/stress_pool.py --runs 20

Prints one line per run and ``finished N of M``; exits non-zero unless every run finished.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Tuple

sys.path.insert(0, str(Path(__file__).parent))

from dl_fault_server import start_server  # noqa: E402
from dl_helpers import write_jsonl, zero_record  # noqa: E402

ROWS, PER_SHARD, PROCESSES = 32, 2, 2


def one_run(base: str, folder: Path, limit_s: float) -> Tuple[bool, float, str]:
    """(finished, seconds, note) of one download of the 16-shard shape into ``folder``."""
    src = write_jsonl(folder / "zero.jsonl", [zero_record(i, f"{base}/img/{i}.jpg") for i in range(ROWS)])
    out = folder / "out"
    ccmb = str(Path(sys.executable).parent / "ccmb")
    cmd = [ccmb, "download", "zero", "-i", str(src), "-o", str(out), "--processes", str(PROCESSES),
           "--threads", "4", "--image-size", "32", "--timeout", "5", "--retries", "0",
           "--samples-per-shard", str(PER_SHARD), "--allow-private", "--host-groups", "0"]
    env = dict(os.environ, NO_ALBUMENTATIONS_UPDATE="1", WANDB_MODE="disabled")
    t0 = time.monotonic()
    try:
        res = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=limit_s)
    except subprocess.TimeoutExpired:
        return False, time.monotonic() - t0, f"HUNG (no exit within {limit_s:.0f}s)"
    elapsed = time.monotonic() - t0
    if res.returncode != 0:
        return False, elapsed, f"exit {res.returncode}: {res.stderr.strip().splitlines()[-1:]}"
    if "download summary" not in res.stdout or not (out / "manifest.json").exists():
        return False, elapsed, "no summary or no manifest.json"
    return True, elapsed, f"{len(list(out.glob('*.tar')))} shards"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=20)
    ap.add_argument("--limit-s", type=float, default=180.0, help="wall-clock limit per run (a hang)")
    args = ap.parse_args()
    state, server = start_server()
    finished = 0
    try:
        for i in range(args.runs):
            with tempfile.TemporaryDirectory(prefix="ccmb-stress-") as tmp:
                ok, seconds, note = one_run(state.base, Path(tmp), args.limit_s)
            finished += ok
            print(f"run {i + 1:2d}: {'finished' if ok else 'FAILED'} in {seconds:5.1f}s  {note}", flush=True)
    finally:
        server.shutdown()
        server.server_close()
    print(f"finished {finished} of {args.runs}")
    return 0 if finished == args.runs else 1


if __name__ == "__main__":
    sys.exit(main())
