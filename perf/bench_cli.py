"""Start-up time of the two commands' ``--help``, each in a fresh interpreter (medians of N runs).

Baselines side by side: a bare interpreter importing click (the floor), and ``ccmb-bench --help`` as it was
before the shared CLI helpers moved to ``ccmb.clikit`` (it imported ``ccmb.cli`` and with it every ``ccmb``
command), emulated by importing ``ccmb.cli`` first. Also lists the heavy packages each one loads.

    .venv/bin/python perf/bench_cli.py [--repeat 7]
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time

HEAVY = ("pyarrow", "numpy", "PIL", "pandas", "scipy", "sklearn", "torch", "transformers", "pyspark")

CASES = {
    "bare python + click": "import click",
    "ccmb-bench --help (before: via ccmb.cli)": "import ccmb.cli\nfrom ccmb_bench.cli import main\n{run}",
    "ccmb-bench --help": "from ccmb_bench.cli import main\n{run}",
    "ccmb --help": "from ccmb.cli import main\n{run}",
}
RUN = ("import sys, json\ntry:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
       "print(json.dumps(sorted({m.split('.')[0] for m in sys.modules})), file=sys.stderr)")


def measure(code: str, repeat: int):
    times, loaded = [], set()
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
        times.append(time.perf_counter() - t0)
        if out.returncode != 0:
            raise SystemExit(f"failed: {code!r}\n{out.stderr}")
        if out.stderr.strip():
            loaded = set(json.loads(out.stderr.strip().splitlines()[-1]))
    return statistics.median(times), sorted(loaded & set(HEAVY))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeat", type=int, default=7)
    args = ap.parse_args()
    results = {name: measure(code.format(run=RUN), args.repeat) for name, code in CASES.items()}
    before = results["ccmb-bench --help (before: via ccmb.cli)"][0]
    print(f"median of {args.repeat} fresh interpreters; ratio = before / this")
    print(f"{'case':<42} {'median s':>9} {'ratio':>7}  heavy packages loaded")
    for name, (seconds, heavy) in results.items():
        print(f"{name:<42} {seconds:>9.3f} {before / seconds:>6.1f}x  {', '.join(heavy) or '-'}")


if __name__ == "__main__":
    main()
