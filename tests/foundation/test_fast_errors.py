"""Every mistake that can be judged from names and paths is answered with one clear error before torch or
transformers is imported (the list is perf/bench_cli.py's, which times it; here: messages and modules only)."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

_spec = importlib.util.spec_from_file_location("bench_cli", Path(__file__).resolve().parents[2] / "perf" / "bench_cli.py")
bench_cli = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(bench_cli)


@pytest.fixture(scope="module")
def fixtures(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("mistakes")
    return tmp, bench_cli.make_fixtures(tmp)


@pytest.mark.parametrize("label,program,args,phrase", bench_cli.MISTAKES, ids=[m[0] for m in bench_cli.MISTAKES])
def test_mistake_is_answered_before_torch(fixtures, label, program, args, phrase):
    tmp, env = fixtures
    _, code, lines, modules = bench_cli.run_mistake(program, args, tmp, env)
    text = "\n".join(lines)
    assert code in (1, 2), (code, text)
    assert phrase in text, text
    assert "Traceback" not in text
    errors = [ln for ln in lines if ln.startswith("Error")]
    assert len(errors) <= 1, errors
    assert not modules & {"torch", "transformers"}, f"{label}: {sorted(modules & {'torch', 'transformers'})} imported"


def test_light_model_names_are_the_registry():
    """precheck's names (no torch) cover ccmb_bench.adapters.MODELS: a model registered by a family module must be
    added to ccmb_bench.precheck.BUILTIN_MODEL_NAMES (or come as a weights.json entry with its kind)."""
    import json
    import subprocess
    import sys

    from ccmb_bench import precheck

    out = subprocess.run([sys.executable, "-c", "import json; from ccmb_bench.adapters import MODELS; "
                          "print(json.dumps(sorted(MODELS)))"], capture_output=True, text=True, timeout=120)
    registered = set(json.loads(out.stdout))
    assert registered <= set(precheck.model_names()), sorted(registered - set(precheck.model_names()))
    assert set(precheck.BUILTIN_MODEL_NAMES) <= registered


def test_open_clip_forms_pass_the_light_check(tmp_path, monkeypatch):
    import sys

    from ccmb_bench import precheck

    monkeypatch.delitem(sys.modules, "ccmb_bench.adapters", raising=False)  # as in a fresh `ccmb-bench run`

    folder = tmp_path / "oc"
    folder.mkdir()
    (folder / precheck.OPEN_CLIP_CONFIG).write_text("{}", encoding="utf-8")
    precheck.check_model(str(folder))  # its family reads the folder
    precheck.check_model("open_clip:hf-hub:timm/ViT-B-16-SigLIP")  # a slash, but a name of the family
    with pytest.raises(precheck.PrecheckError, match="no such model directory"):
        precheck.check_model(str(tmp_path / "nowhere" / "oc"))
