"""perf/bench_train.py on CPU at its smallest: every runner steps and the FLOP columns are consistent."""
import importlib.util
import json
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def _bench_module():
    spec = importlib.util.spec_from_file_location("bench_train", REPO / "perf" / "bench_train.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_bench_train_counts_flops_per_runner(tmp_path, capsys):
    out = tmp_path / "bench.json"
    result = _bench_module().main(["--steps", "1", "--warmup", "1", "--repeats", "1",
                                   "--batch-size", "8", "--queue-size", "64", "--skip-data", "--skip-pixel-fgd",
                                   "--fgd-config", "r2d2-tiny", "--fgd-batch-size", "2", "--json", str(out)])
    flops = result["gflop_per_step"]
    # the full objective does strictly more matmul work than CLIP; the masked view less than the default view
    assert flops["clip"] > 0
    assert flops["clip"] < flops["r2d2_masked_view"] < flops["r2d2"]
    assert result["r2d2_flop_ratio"] == round(flops["clip"] / flops["r2d2"], 3)
    assert 0 < result["r2d2_flop_ratio"] < result["r2d2_masked_view_flop_ratio"] < 1
    assert json.loads(out.read_text())["gflop_per_step"] == flops
    printed = capsys.readouterr().out
    assert "FLOP ratio" in printed and "ratio R2D2/CLIP" in printed
