"""Training data declared: registered names (data/training_data.json, --training-data), trainer runs (their
provenance: data_provenance.json, run_args.json, init chains), the status of each result (zero-shot,
fine-tuned on this set, seen in training, not declared) and a trainer run named after its run folder."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from ccmb_bench import training
from ccmb_bench.cli import main
from ccmb_bench.leaderboard import collect, overview
from ccmb_bench.results import write_result

from lb_helpers import rec, res


def _status(model, dataset, split, decl=None, **kw):
    info = training.classify(res(model, dataset, split, "retrieval", rec(1, 1), **kw),
                             decl or training.load_declarations())
    return info.status, info


def test_registered_names_are_declared():
    from ccmb_bench.adapters import MODELS

    decl = training.load_declarations()
    weights = json.loads((Path(training.__file__).parents[1] / "models" / "weights.json").read_text("utf-8"))
    names = set(MODELS) | set(weights["models"])
    missing = sorted(n for n in names if n not in decl.models)
    assert not missing, f"add them to ccmb_bench/data/training_data.json: {missing}"
    for name, entry in decl.models.items():
        assert entry["source"].startswith("https://") and (entry["pretraining"] or entry["fine_tuned_on"]), name


def test_status_of_registered_names():
    assert _status("r2d2-vitl14", "flickr30k-cn", "test")[0] == "zero-shot"
    status, info = _status("r2d2-vitb16", "flickr30k-cna", "test")
    assert status == "fine-tuned" and info.why == "fine-tuned on flickr30k-cna/train"
    assert info.summary == "Zero-23M; fine-tuned on flickr30k-cna/train" and info.source.startswith("https://")
    assert _status("r2d2-vitb16", "flickr30k-cn", "test")[0] == "fine-tuned"  # the same images
    assert _status("r2d2-vitb16", "icr", "val")[0] == "zero-shot"
    status, info = _status("r2d2-vitb16-icr", "icr", "train")
    assert status == "seen" and "itself" in info.why
    assert _status("my-model", "icr", "val")[0] == "unknown"
    assert _status("my-model", "icr", "val", setting="zero-shot")[0] == "zero-shot"
    status, info = _status("r2d2-vitl14", "flickr30k-cn", "test", setting="Fine-Tuned")  # the user's checkpoint
    assert status == "fine-tuned" and info.source == "--setting"
    assert training.setting_status("pre-trained") is None and training.setting_status("ZS") == "zero-shot"


def test_user_declarations_and_decontamination_reports(tmp_path):
    report = {"against": ["coco-cn/test"], "datasets": {
        "coco-cn/test": {"images": 1000, "texts": 1053, "images_with_copies": 37, "texts_with_copies": 0},
        "flickr30k-cn/test": {"images": 1000, "texts": 5000, "images_with_copies": 0, "texts_with_copies": 0}}}
    (tmp_path / "zero_report.json").write_text(json.dumps(report), encoding="utf-8")
    (tmp_path / "mine.json").write_text(json.dumps({"models": {
        "r2d2-vitl14": {"pretraining": ["Zero-250M"], "source": "https://github.com/yuxie11/R2D2",
                        "decontamination_reports": ["zero_report.json"]},
        "my-clip": {"pretraining": ["web"], "seen": [{"dataset": "muge", "why": "trained on MUGE's images"}],
                    "source": "https://example.org/card"}}}), encoding="utf-8")
    decl = training.load_declarations(tmp_path / "mine.json")
    status, info = _status("r2d2-vitl14", "coco-cn", "test", decl)
    assert status == "seen" and "37 of 1000 images" in info.why and "zero_report.json" in info.why
    assert _status("r2d2-vitl14", "flickr30k-cn", "test", decl)[0] == "zero-shot"  # no copies found there
    assert _status("my-clip", "muge", "valid", decl)[1].why == "trained on MUGE's images"
    assert _status("r2d2-vitb16", "flickr30k-cna", "test", decl)[0] == "fine-tuned"  # shipped entries stay
    (tmp_path / "bad.json").write_text(json.dumps({"models": {"x": {"fine_tuned_on": ["icr"]}}}), encoding="utf-8")
    with pytest.raises(training.DeclarationError, match=r"bad\.json.*'icr' is not '<dataset>/<split>'"):
        training.load_declarations(tmp_path / "bad.json")
    # from the command line: one line, exit 1
    out = tmp_path / "bench"
    write_result(out, res("r2d2-vitl14", "coco-cn", "test", "retrieval", rec(50, 40)))
    cli = CliRunner().invoke(main, ["leaderboard", "--results", str(out), "--training-data", str(tmp_path / "bad.json")])
    assert cli.exit_code == 1 and cli.output.startswith("Error: ") and "bad.json" in cli.output
    cli = CliRunner().invoke(main, ["leaderboard", "--results", str(out), "--training-data", str(tmp_path / "mine.json")])
    assert cli.exit_code == 0 and "### Seen in training" in cli.output


# ------------------------------------------------------------------------------------------ trainer runs

def _run_folder(base: Path, name: str, args: dict, provenance=None, model_src: Path = None) -> Path:
    run = base / name
    (run / "model").mkdir(parents=True)
    if model_src is not None:
        shutil.rmtree(run / "model")
        shutil.copytree(model_src, run / "model")
    else:
        (run / "model" / "config.json").write_text("{}", encoding="utf-8")
    (run / "run_args.json").write_text(json.dumps(args), encoding="utf-8")
    if provenance is not None:
        (run / "data_provenance.json").write_text(json.dumps(provenance), encoding="utf-8")
        (run / "model" / "data_provenance.json").write_text(json.dumps(provenance), encoding="utf-8")
    return run


def _prov(drop_captions: bool, texts: int = 2):
    report = {"against": ["icr/val", "icm/val"], "settings": {"drop_caption_matches": drop_captions},
              "datasets": {"icr/val": {"images": 100, "texts": 120, "images_with_copies": 3, "texts_with_copies": texts},
                           "icm/val": {"images": 100, "texts": 200, "images_with_copies": 0, "texts_with_copies": 0}}}
    return {"shard_sets": [{"path": "/data/shards", "provenance": {
        "decision_tables": [{"kind": "decontaminate", "dropped": 3}],
        "decontamination": {"against": ["icr/val", "icm/val"], "report": report}}}]}


def test_trainer_provenance_and_status(tmp_path):
    decl = training.load_declarations()
    pre = _run_folder(tmp_path, "pre-1", {"command": "pretrain", "shards": "/data/shards"}, _prov(False))
    rec_ = training.provenance(str(pre))
    assert rec_["provenance"] and rec_["run"] == "pre-1" and rec_["decontaminated_against"] == ["icm/val", "icr/val"]
    assert rec_["stages"][0]["stage"] == "pre-training"
    assert training.provenance(str(pre / "model")) == rec_  # RUN or RUN/model: the same record

    def status(record, dataset, split):
        r = res("pre-1", dataset, split, "retrieval", rec(1, 1), training=record)
        return training.classify(r, decl)

    icr = status(rec_, "icr", "val")  # 2 texts of icr/val kept in the corpus (caption matches not dropped)
    assert icr.status == "seen" and "2 text(s) of icr/val" in icr.why and icr.decontaminated == "yes"
    icm = status(rec_, "icm", "val")
    assert (icm.status, icm.decontaminated) == ("zero-shot", "yes")
    assert icm.summary == "ccmb train run pre-1: pre-trained on 1 ccmb shard set (decontaminated against icm/val, " \
                          "icr/val)"
    assert status(rec_, "flickr30k-cna", "test").decontaminated == "no"
    clean = training.provenance(str(_run_folder(tmp_path, "pre-2", {"command": "pretrain"}, _prov(True))))
    assert status(clean, "icr", "val").status == "zero-shot"
    # fine-tuning from that run: the init chain is followed back
    ft = _run_folder(tmp_path, "ft-icr", {"command": "finetune", "dataset": "icr", "split": "train",
                                          "init": str(tmp_path / "pre-2" / "model")})
    ft_rec = training.provenance(str(ft))
    assert [s["stage"] for s in ft_rec["stages"]] == ["pre-training", "fine-tuning"] and ft_rec["run"] == "ft-icr"
    assert status(ft_rec, "icr", "val").status == "fine-tuned"
    assert status(ft_rec, "icr", "train").status == "seen"
    assert status(ft_rec, "icm", "val").status == "zero-shot"
    official = _run_folder(tmp_path, "ft-off", {"command": "finetune", "dataset": "icm", "split": "train",
                                                "init": "/ckpt/r2d2_vitb16.pth"})
    off_rec = training.provenance(str(official))
    assert off_rec["stages"] == [{"stage": "init", "from": "r2d2_vitb16.pth"},
                                 {"stage": "fine-tuning", "dataset": "icm", "split": "train"}]
    assert status(off_rec, "icm", "val").decontaminated == "unknown"
    # a folder without provenance, a registered name: nothing recorded
    plain = tmp_path / "plain"
    plain.mkdir()
    (plain / "config.json").write_text("{}", encoding="utf-8")
    assert training.provenance(str(plain)) == {"provenance": False, "decontaminated_against": []}
    assert training.provenance("r2d2-vitl14")["provenance"] is False
    # a hostile run_args.json (deeply nested) is a warning, not a crash
    (plain / "run_args.json").write_text("[" * 5000 + "]" * 5000, encoding="utf-8")
    assert training.provenance(str(plain))["provenance"] is False


def test_run_display_name(tmp_path):
    run = _run_folder(tmp_path, "run-7", {"command": "pretrain"})
    (run / "best").mkdir()
    (run / "checkpoints" / "step-300").mkdir(parents=True)
    assert training.run_display_name(run / "model") == "run-7"
    assert training.run_display_name(run / "best") == "run-7-best"
    assert training.run_display_name(run / "checkpoints" / "step-300") == "run-7-step-300"
    assert training.run_display_name(run) is None  # the run folder itself resolves to RUN/model first
    assert training.run_display_name(tmp_path) is None


def test_trainer_run_on_the_leaderboard_under_its_run_name(tiny_models, bench_root, tmp_path):
    """Issue 23: a trainer run evaluated as RUN_DIR/model appears as the run, not as "model"; its provenance
    gives the training column."""
    run = _run_folder(tmp_path, "zero-run", {"command": "pretrain"}, _prov(True), model_src=tiny_models.prd2)
    out = tmp_path / "bench"
    for target in (run / "model", run):
        cli = CliRunner().invoke(main, ["run", "-m", str(target), "-d", "icm", "-r", str(bench_root), "-o", str(out),
                                        "--device", "cpu", "--bootstrap", "50", "--no-fetch"])
        assert cli.exit_code == 0, cli.output
    files = sorted((out / "results").glob("*.json"))
    assert len(files) == 1 and files[0].name.startswith("zero-run__")  # both names are the run: one result
    result = json.loads(files[0].read_text(encoding="utf-8"))
    assert result["model"] == "zero-run" and result["training_data"]["stages"][0]["stage"] == "pre-training"
    assert result["training_data"]["decontaminated"] is True
    rows = [r for r in collect(out) if not r["reference"]]
    assert [(r["model"], r["training"], r["decontaminated"]) for r in rows] == [("zero-run", "zero-shot", "yes")]
    _, blocks = overview(collect(out))
    line = blocks[0]["lines"][0]
    assert line["model"] == "zero-run" and line["training_data"].startswith("ccmb train run zero-run")
