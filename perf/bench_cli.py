"""Start-up of the two commands' ``--help``, and how fast common mistakes are answered, each in a fresh
interpreter (medians of N runs).

Part 1, ``--help``: a bare interpreter importing click (the floor), and ``ccmb-bench --help`` as it was before
the shared CLI helpers moved to ``ccmb.clikit`` (it imported ``ccmb.cli`` and with it every ``ccmb`` command),
emulated by importing ``ccmb.cli`` first, side by side with both commands now. Lists the heavy packages loaded.

Part 2, mistakes (:data:`MISTAKES`): every mistake that can be judged from names and paths (unknown model,
dataset, config, split, missing root, checkpoint, shards or tokenizer, a hostile config.json, an offline fetch,
numbers out of range, a folder the demo did not make, broken shard files) must be answered with one error
within 1 s wall on a 2-core machine, before torch or transformers is imported. Each case prints its median,
its ratio to ``--help`` of the same command, whether torch/transformers were loaded, and the first line of the
error. ``tests/foundation/test_fast_errors.py`` runs the same list (messages and modules, no timing).

    .venv/bin/python perf/bench_cli.py [--repeat 7] [--mistakes-only]
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, List, Tuple

HEAVY = ("pyarrow", "numpy", "PIL", "pandas", "scipy", "sklearn", "torch", "transformers", "pyspark")
BUDGET_S = 1.0

CASES = {
    "bare python + click": "import click",
    "ccmb-bench --help (before: via ccmb.cli)": "import ccmb.cli\nfrom ccmb_bench.cli import main\n{run}",
    "ccmb-bench --help": "from ccmb_bench.cli import main\n{run}",
    "ccmb --help": "from ccmb.cli import main\n{run}",
}
RUN = ("import sys, json\ntry:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
       "print(json.dumps(sorted({m.split('.')[0] for m in sys.modules})), file=sys.stderr)")

#: (label, program, arguments, a phrase the one-line error must hold). ``{tmp}`` is the folder of
#: :func:`make_fixtures`; every case runs with ``CCMB_HOME={tmp}/home`` and ``CCMB_OFFLINE=1``.
MISTAKES: List[Tuple[str, str, List[str], str]] = [
    ("run: unknown model", "ccmb-bench", ["run", "-m", "r2d2-vitl1", "-d", "icr", "-r", "{tmp}/data"],
     "did you mean 'r2d2-vitl14'"),
    ("run: unknown dataset", "ccmb-bench", ["run", "-m", "r2d2-vitl14", "-d", "icrr", "-r", "{tmp}/data"],
     "did you mean 'icr'"),
    ("run: wrong split", "ccmb-bench", ["run", "-m", "r2d2-vitl14", "-d", "icr", "--split", "test", "-r", "{tmp}/data"],
     "icr has train and val"),
    ("run: missing --root", "ccmb-bench", ["run", "-m", "r2d2-vitl14", "-d", "icr", "-r", "{tmp}/nowhere"],
     "does not exist"),
    ("run: config without checkpoint", "ccmb-bench", ["run", "-m", "r2d2-tiny", "-d", "icr", "-r", "{tmp}/data"],
     "needs --checkpoint"),
    ("run: missing checkpoint", "ccmb-bench",
     ["run", "-m", "r2d2-tiny", "-c", "{tmp}/no.pth", "-d", "icr", "-r", "{tmp}/data"], "no such file"),
    ("run: missing tokenizer", "ccmb-bench",
     ["run", "-m", "r2d2-tiny", "-c", "{tmp}/w.pth", "--tokenizer", "{tmp}/nope", "-d", "icr", "-r", "{tmp}/data"],
     "--tokenizer"),
    ("run: weights missing, --no-fetch", "ccmb-bench",
     ["run", "-m", "r2d2-vitl14", "-d", "icr", "-r", "{tmp}/data", "--no-fetch"], "ccmb fetch model r2d2-vitl14"),
    ("run: hostile config.json", "ccmb-bench", ["run", "-m", "{tmp}/huge", "-d", "icr", "-r", "{tmp}/data"],
     "config.json"),
    ("run: not a model folder", "ccmb-bench", ["run", "-m", "{tmp}/data", "-d", "icr", "-r", "{tmp}/data"],
     "not a model directory"),
    ("fetch model: unknown name", "ccmb", ["fetch", "model", "r2d2-vit"], "did you mean"),
    ("fetch dataset: unknown name", "ccmb", ["fetch", "dataset", "mug"], "did you mean 'muge'"),
    ("fetch model: offline", "ccmb", ["fetch", "model", "r2d2-vitl14", "--offline"], "offline"),
    ("train pretrain: unknown config", "ccmb",
     ["train", "pretrain", "--config", "r2d2-tny", "--shards", "{tmp}/shards", "--tokenizer", "{tmp}/vocab.txt",
      "--output", "{tmp}/run"], "did you mean 'r2d2-tiny'"),
    ("train pretrain: no shards", "ccmb",
     ["train", "pretrain", "--config", "r2d2-tiny", "--shards", "{tmp}/data", "--tokenizer", "{tmp}/vocab.txt",
      "--output", "{tmp}/run"], "no NNNNN.tar shards"),
    ("train pretrain: missing tokenizer", "ccmb",
     ["train", "pretrain", "--config", "r2d2-tiny", "--shards", "{tmp}/shards", "--tokenizer", "{tmp}/nope",
      "--output", "{tmp}/run"], "--tokenizer"),
    ("train finetune: unknown dataset", "ccmb",
     ["train", "finetune", "--task", "retrieval", "--dataset", "icrr", "--root", "{tmp}/data", "--init", "{tmp}/tiny",
      "--output", "{tmp}/run"], "did you mean 'icr'"),
    ("train finetune: wrong split", "ccmb",
     ["train", "finetune", "--task", "retrieval", "--dataset", "icr", "--train-split", "test", "--root", "{tmp}/data",
      "--init", "{tmp}/tiny", "--output", "{tmp}/run"], "icr has train and val"),
    ("train: --batch-size 0", "ccmb",
     ["train", "pretrain", "--config", "r2d2-tiny", "--shards", "{tmp}/shards", "--output", "{tmp}/run",
      "--batch-size", "0"], "--batch-size"),
    ("datasets info: unknown name", "ccmb", ["datasets", "info", "icrr", "--root", "{tmp}/data"], "did you mean 'icr'"),
    ("datasets info: wrong split", "ccmb", ["datasets", "info", "icr", "--root", "{tmp}/data", "--split", "test"],
     "icr has train and val"),
    ("shards ls: 0-byte tar", "ccmb", ["shards", "ls", "{tmp}/empty_tar"], "00000.tar"),
    ("verify: binary manifest.json", "ccmb", ["verify", "{tmp}/binary_manifest"], "manifest.json"),
    ("demo: --images 5", "ccmb", ["demo", "--workdir", "{tmp}/demo", "--images", "5"], "--images"),
    ("demo: a user's folder", "ccmb", ["demo", "--workdir", "{tmp}/user_folder"], "not made by ccmb demo"),
]


def make_fixtures(tmp: Path) -> Dict[str, str]:
    """The files the mistakes point at (no model weights: nothing here is loadable); the environment."""
    tmp = Path(tmp)
    (tmp / "data").mkdir(parents=True, exist_ok=True)
    (tmp / "home").mkdir(exist_ok=True)
    (tmp / "w.pth").write_bytes(b"")
    (tmp / "vocab.txt").write_text("[PAD]\n[UNK]\n[CLS]\n[SEP]\n[MASK]\n", encoding="utf-8")
    configs = Path(__file__).resolve().parents[1] / "models" / "configs"
    tiny = json.loads((configs / "r2d2-tiny.json").read_text(encoding="utf-8"))
    for name, cfg in (("tiny", tiny), ("huge", dict(tiny, vision_width=4096, vision_heads=64, vision_mlp=16384,
                                                         vision_layers=64, text_width=4096, text_heads=64,
                                                         text_mlp=16384, text_layers=64, vocab_size=250000))):
        (tmp / name).mkdir(exist_ok=True)
        (tmp / name / "config.json").write_text(json.dumps(cfg), encoding="utf-8")
    (tmp / "tiny" / "vocab.txt").write_text("[PAD]\n", encoding="utf-8")
    (tmp / "shards").mkdir(exist_ok=True)
    (tmp / "shards" / "00000.tar").write_bytes(b"\0" * 1024)
    (tmp / "shards" / "sizes.json").write_text('{"00000.tar": 1}', encoding="utf-8")
    (tmp / "empty_tar").mkdir(exist_ok=True)
    (tmp / "empty_tar" / "00000.tar").write_bytes(b"")
    (tmp / "binary_manifest").mkdir(exist_ok=True)
    (tmp / "binary_manifest" / "manifest.json").write_bytes(bytes(range(256)) * 4)
    (tmp / "user_folder" / "sub").mkdir(parents=True, exist_ok=True)
    (tmp / "user_folder" / "thesis.txt").write_text("mine", encoding="utf-8")
    (tmp / "user_folder" / "sub" / "a.csv").write_text("a\n", encoding="utf-8")
    return {"CCMB_HOME": str(tmp / "home"), "CCMB_OFFLINE": "1"}


def argv_of(program: str, args: List[str], tmp: Path) -> List[str]:
    module = {"ccmb": "ccmb", "ccmb-bench": "ccmb_bench"}[program]
    return [sys.executable, "-m", module, *[a.replace("{tmp}", str(tmp)) for a in args]]


#: run in the child: the command, then the top-level modules it loaded (stderr's last line)
PROBE = ("import json, runpy, sys\nsys.argv = sys.argv[1:]\ntry:\n    runpy.run_module(sys.argv[0], run_name='__main__')"
         "\nexcept SystemExit as e:\n    code = e.code\nelse:\n    code = 0\n"
         "print(json.dumps({'code': code if isinstance(code, int) else 1, "
         "'modules': sorted({m.split('.')[0] for m in sys.modules})}), file=sys.stderr)")


def run_mistake(program: str, args: List[str], tmp: Path, env: Dict[str, str]):
    """(seconds, exit code, error lines, top-level modules loaded) of one mistake in a fresh interpreter."""
    argv = argv_of(program, args, tmp)
    t0 = time.perf_counter()
    out = subprocess.run([sys.executable, "-c", PROBE, *argv[2:]], capture_output=True, text=True, timeout=120,
                         env=dict(os.environ, **env))
    took = time.perf_counter() - t0
    lines = out.stderr.strip().splitlines()
    info = json.loads(lines[-1])
    return took, info["code"], lines[:-1], set(info["modules"])


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
    ap.add_argument("--mistakes-only", action="store_true")
    args = ap.parse_args()
    print(f"median of {args.repeat} fresh interpreters; load average {os.getloadavg()[0]:.1f}")
    results = {name: measure(code.format(run=RUN), args.repeat) for name, code in CASES.items()}
    if not args.mistakes_only:
        before = results["ccmb-bench --help (before: via ccmb.cli)"][0]
        print(f"{'case':<42} {'median s':>9} {'ratio':>7}  heavy packages loaded   (ratio = before / this)")
        for name, (seconds, heavy) in results.items():
            print(f"{name:<42} {seconds:>9.3f} {before / seconds:>6.1f}x  {', '.join(heavy) or '-'}")
        print()
    helps = {"ccmb": results["ccmb --help"][0], "ccmb-bench": results["ccmb-bench --help"][0]}
    print(f"{'mistake':<36} {'median s':>9} {'/ --help':>8}  {'<=1s':>4}  torch/tf  first line of the answer")
    worst, failures = 0.0, []
    with tempfile.TemporaryDirectory(prefix="ccmb-bench-cli-") as d:
        tmp = Path(d)
        env = make_fixtures(tmp)
        for label, program, margs, phrase in MISTAKES:
            runs = [run_mistake(program, margs, tmp, env) for _ in range(args.repeat)]
            seconds = statistics.median(r[0] for r in runs)
            _, code, lines, modules = runs[-1]
            heavy = sorted(modules & {"torch", "transformers"})
            text = " ".join(lines)
            ok = code != 0 and phrase in text and not heavy and seconds <= BUDGET_S
            if not ok:
                failures.append(label)
            worst = max(worst, seconds)
            first = next((ln for ln in lines if ln.startswith(("Error", "PROBLEM"))), lines[0] if lines else "")
            first = first.replace(str(tmp), "$TMP")
            print(f"{label:<36} {seconds:>9.3f} {seconds / helps[program]:>7.1f}x  {'yes' if seconds <= BUDGET_S else 'NO':>4}"
                  f"  {', '.join(heavy) or '-':<8}  {first[:90]}")
    print(f"\n{len(MISTAKES)} mistakes, slowest {worst:.3f} s (budget {BUDGET_S:.1f} s); "
          + ("all answered in time with one error, before torch/transformers" if not failures
             else f"NOT MET: {', '.join(failures)}"))
    if failures:
        sys.exit(1)


if __name__ == "__main__":
    main()
