"""Training data: what a model was trained on, and for each result whether it is **zero-shot**, **fine-tuned**
on the evaluated set, or **seen in training**.

Two sources, one rule set (:func:`classify`):

- a **trainer run** (a ``ccmb train`` output folder) carries its provenance: ``data_provenance.json`` (the
  shard sets it pre-trained on, each with its decontamination: the sets it was cleaned against and the
  report of the copies found) and ``run_args.json`` (a fine-tuning run names its dataset and split, and its
  ``init``, followed back through earlier runs). :func:`provenance` reads them when ``ccmb-bench run``
  evaluates the folder and the result keeps them (``training_data``);
- a **registered name** (``ccmb-bench models``) is declared in ``data/training_data.json`` from its model
  card (a new name is one entry there; ``--training-data FILE`` adds or overrides entries).

A set is *seen in training* when the model was fine-tuned on the evaluated split itself, when a
declaration says so (e.g. a decontamination report found the set's images in the model's corpus), or when a
run's own decontamination report found copies of the set's texts that the shard set kept. It is
*fine-tuned* when the model was fine-tuned on another split of the set (or of a set with the same images,
``related``); otherwise *zero-shot*. Without provenance or declaration the status is *unknown*, unless
``--setting zero-shot|fine-tuned`` declared it.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

from ccmb_bench.resultfiles import UnsafeFileError, read_json, real_root

logger = logging.getLogger(__name__)

DECLARATIONS_FILE = Path(__file__).with_name("data") / "training_data.json"
PROVENANCE_FILE = "data_provenance.json"  # models.train.pretrain.PROVENANCE_FILE
RUN_ARGS_FILE = "run_args.json"  # models.train.pretrain.write_run_files
FINAL_MODEL_DIR = "model"  # models.train.loop.FINAL_DIR
MAX_INIT_CHAIN = 8

STATUSES = ("zero-shot", "fine-tuned", "seen", "unknown")
STATUS_LABELS = {"zero-shot": "zero-shot", "fine-tuned": "fine-tuned on this set", "seen": "seen in training",
                 "unknown": "not declared"}
_SETTING_WORDS = {"zero-shot": "zero-shot", "zeroshot": "zero-shot", "zs": "zero-shot",
                  "fine-tuned": "fine-tuned", "finetuned": "fine-tuned", "fine-tune": "fine-tuned",
                  "finetune": "fine-tuned", "ft": "fine-tuned"}


class DeclarationError(ValueError):
    """A training-data declaration file that cannot be used (names the file and the entry)."""


# ---------------------------------------------------------------------------------------- declarations

@dataclass
class Declarations:
    """Registered names -> their declared training data; groups of datasets sharing their images."""

    models: Dict[str, Dict[str, Any]]
    related: List[List[str]]
    files: List[str]

    def same_images(self, a: str, b: str) -> bool:
        return a == b or any(a in group and b in group for group in self.related)


def _str_list(value: Any, where: str) -> List[str]:
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise DeclarationError(f"{where} must be a list of strings")
    return list(value)


def _report_seen(report_path: Path, where: str) -> List[Dict[str, str]]:
    """``seen`` entries from a ``ccmb decontaminate --report`` JSON about a model's training corpus: every set
    with images (or texts) found in that corpus."""
    try:
        report = read_json(report_path, real_root(report_path.parent))
    except UnsafeFileError as exc:
        raise DeclarationError(f"{where}: decontamination report {report_path}: {exc}") from None
    sets = report.get("datasets") if isinstance(report, dict) else None
    if not isinstance(sets, dict):
        raise DeclarationError(f"{where}: {report_path} is not a decontamination report (no \"datasets\")")
    out = []
    for set_name, info in sets.items():
        if not isinstance(info, dict):
            continue
        images, texts = int(info.get("images_with_copies") or 0), int(info.get("texts_with_copies") or 0)
        if images or texts:
            dataset, _, split = str(set_name).rpartition("/")
            out.append({"dataset": dataset or str(set_name), "split": split or "*",
                        "why": f"decontamination report {report_path.name}: {images} of {info.get('images', '?')} "
                               f"images and {texts} of {info.get('texts', '?')} texts have copies in the training "
                               "corpus"})
    return out


def _check_entry(name: str, entry: Any, where: str, base: Path) -> Dict[str, Any]:
    if not isinstance(entry, dict):
        raise DeclarationError(f"{where}: models.{name} must be an object")
    out: Dict[str, Any] = {"pretraining": _str_list(entry.get("pretraining"), f"{where}: models.{name}.pretraining"),
                           "fine_tuned_on": _str_list(entry.get("fine_tuned_on"),
                                                      f"{where}: models.{name}.fine_tuned_on"),
                           "seen": [], "source": str(entry.get("source") or ""), "note": str(entry.get("note") or "")}
    for item in out["fine_tuned_on"]:
        if item.count("/") < 1:
            raise DeclarationError(f"{where}: models.{name}.fine_tuned_on: {item!r} is not '<dataset>/<split>'")
    seen = entry.get("seen") or []
    if not isinstance(seen, list):
        raise DeclarationError(f"{where}: models.{name}.seen must be a list of {{dataset, split, why}}")
    for k, item in enumerate(seen):
        if not (isinstance(item, dict) and isinstance(item.get("dataset"), str)):
            raise DeclarationError(f"{where}: models.{name}.seen[{k}] needs a string 'dataset'")
        out["seen"].append({"dataset": item["dataset"], "split": str(item.get("split") or "*"),
                            "why": str(item.get("why") or "declared")})
    for rel in _str_list(entry.get("decontamination_reports"), f"{where}: models.{name}.decontamination_reports"):
        out["seen"] += _report_seen(base / rel, f"{where}: models.{name}")
    return out


def load_declarations(extra: Optional[Path] = None) -> Declarations:
    """The shipped declarations, with the entries of ``extra`` (same format) added or replacing them."""
    models: Dict[str, Dict[str, Any]] = {}
    related: List[List[str]] = []
    files = []
    for path in [DECLARATIONS_FILE] + ([Path(extra)] if extra else []):
        try:
            data = read_json(path, real_root(Path(path).parent))
        except UnsafeFileError as exc:
            raise DeclarationError(f"{path}: {exc}") from None
        if not isinstance(data, dict) or not isinstance(data.get("models", {}), dict):
            raise DeclarationError(f"{path}: expected an object with \"models\": {{name: {{...}}}}")
        for name, entry in data.get("models", {}).items():
            models[name] = _check_entry(name, entry, str(path), Path(path).parent)
        for group in data.get("related", []) or []:
            related.append(_str_list(group, f"{path}: related"))
        files.append(str(path))
    return Declarations(models, related, files)


# ---------------------------------------------------------------------------------- trainer provenance

def model_folder(path: Path) -> Path:
    """The model folder ``ccmb-bench run --model PATH`` reads: ``PATH`` itself, or a run's ``model/``/``best/``."""
    from ccmb_bench.adapters import run_model_dir  # the adapters' own rule (imported late: adapters import us)

    return run_model_dir(path)


def run_folder(model_dir: Path) -> Optional[Path]:
    """The ``ccmb train`` run folder a model folder belongs to (``RUN/model``, ``RUN/best``,
    ``RUN/checkpoints/<step>``), or the folder itself when it is a run folder; None otherwise."""
    for candidate in (model_dir, model_dir.parent, model_dir.parent.parent):
        if (candidate / RUN_ARGS_FILE).is_file():
            return candidate
    return None


def run_display_name(model_dir: Path) -> Optional[str]:
    """The name a trainer run's model folder goes by on the leaderboard: the run folder's name (``RUN`` for
    ``RUN/model``, ``RUN-best`` for ``RUN/best``, ``RUN-<step>`` for a checkpoint), None when the folder is not
    part of a run (a plain model folder keeps its own name)."""
    model_dir = Path(model_dir)
    run = run_folder(model_dir)
    if run is None or run == model_dir:
        return None
    if model_dir.parent == run:
        return run.name if model_dir.name == FINAL_MODEL_DIR else f"{run.name}-{model_dir.name}"
    return f"{run.name}-{model_dir.name}"


def _read(path: Path) -> Optional[Any]:
    if not path.is_file():
        return None
    try:
        return read_json(path, real_root(path.parent))
    except UnsafeFileError as exc:
        logger.warning("%s: %s; training data unknown", path, exc)
        return None


def _shard_sets(prov: Any) -> List[Dict[str, Any]]:
    """``shard_sets`` of a ``data_provenance.json``: each set's path, decontamination targets and copies found."""
    out = []
    for entry in (prov or {}).get("shard_sets", []) if isinstance(prov, dict) else []:
        p = (entry or {}).get("provenance") if isinstance(entry, dict) else None
        decon = (p or {}).get("decontamination") if isinstance(p, dict) else None
        decon = decon if isinstance(decon, dict) else {}
        against = [str(a) for a in decon.get("against", []) or [] if isinstance(a, str)]
        report = decon.get("report") if isinstance(decon.get("report"), dict) else {}
        settings = report.get("settings") if isinstance(report.get("settings"), dict) else {}
        copies = {}
        for name, info in (report.get("datasets") or {}).items() if isinstance(report.get("datasets"), dict) else []:
            if isinstance(info, dict):
                copies[str(name)] = {"images": int(info.get("images_with_copies") or 0),
                                     "texts": int(info.get("texts_with_copies") or 0)}
        out.append({"path": str(entry.get("path", "")), "decontaminated_against": against, "copies": copies,
                    "captions_dropped": bool(settings.get("drop_caption_matches", False))})
    return out


def provenance(model: str) -> Dict[str, Any]:
    """What a model folder's trainer provenance says about its training data (kept in each result's
    ``training_data``): ``stages`` (pre-training shard sets, fine-tuning dataset/split, oldest first), ``run``
    (the run folder's name) and ``decontaminated_against`` (the sets every pre-training shard set was cleaned
    against). ``{"provenance": False}`` for a registered name or a folder without provenance."""
    none = {"provenance": False, "decontaminated_against": []}
    folder = Path(model)
    if not folder.is_dir():
        return none
    stages: List[Dict[str, Any]] = []
    seen_dirs = set()
    current: Optional[Path] = model_folder(folder)
    first_run = None
    for _ in range(MAX_INIT_CHAIN):
        if current is None or current.resolve() in seen_dirs:
            break
        seen_dirs.add(current.resolve())
        run = run_folder(current)
        first_run = first_run or run
        args = _read(run / RUN_ARGS_FILE) if run else None
        args = args if isinstance(args, dict) else {}
        prov = _read(current / PROVENANCE_FILE) or (_read(run / PROVENANCE_FILE) if run else None)
        command = str(args.get("command", ""))
        nxt: Optional[Path] = None
        if command == "finetune":
            stages.append({"stage": "fine-tuning", "dataset": str(args.get("dataset", "")),
                           "split": str(args.get("split", ""))})
            init = str(args.get("init", ""))
            if init and Path(init).is_dir():
                nxt = model_folder(Path(init))
            elif init:
                stages.append({"stage": "init", "from": Path(init).name})
        elif command == "pretrain" or prov:
            sets = _shard_sets(prov)
            stages.append({"stage": "pre-training", "shard_sets": sets})
            init = str(args.get("init", ""))
            if init and Path(init).is_dir():
                nxt = model_folder(Path(init))
        current = nxt
    if not stages:
        return none
    stages.reverse()
    pre = [s for st in stages if st["stage"] == "pre-training" for s in st["shard_sets"]]
    against = sorted(set.intersection(*[set(s["decontaminated_against"]) for s in pre])) if pre else []
    return {"provenance": True, "run": first_run.name if first_run else folder.name, "stages": stages,
            "decontaminated_against": against}


# ------------------------------------------------------------------------------------------ per result

@dataclass
class TrainingInfo:
    """A result's training status (``zero-shot``/``fine-tuned``/``seen``/``unknown``), whether its corpus was
    decontaminated against the set (yes/no/unknown), a summary of the model's training data, why the status
    holds for this set, and where the facts come from (provenance, a model card URL, ``--setting``)."""

    status: str
    decontaminated: str
    summary: str
    why: str
    source: str

    @property
    def label(self) -> str:
        return STATUS_LABELS[self.status]


def setting_status(setting: Any) -> Optional[str]:
    """``zero-shot``/``fine-tuned`` when a ``--setting`` label says so, else None."""
    word = str(setting or "").strip().lower().replace("_", "-").replace(" ", "-")
    return _SETTING_WORDS.get(word)


def _split_key(item: str) -> Tuple[str, str]:
    dataset, _, split = item.rpartition("/")
    return dataset, split


def _status_from(fine_tuned: Sequence[str], seen: Sequence[Dict[str, str]], dataset: str, split: str,
                 decl: Declarations) -> Tuple[str, str]:
    for item in seen:
        if item["dataset"] == dataset and item["split"] in ("*", split):
            return "seen", item["why"]
    for item in fine_tuned:
        d, s = _split_key(item)
        if d == dataset and s == split:
            return "seen", f"fine-tuned on {item} itself"
    for item in fine_tuned:
        d, _ = _split_key(item)
        if decl.same_images(d, dataset):
            return "fine-tuned", f"fine-tuned on {item}"
    return "zero-shot", "not trained on this set"


def _provenance_summary(td: Dict[str, Any]) -> str:
    parts = []
    for st in td.get("stages", []):
        if st.get("stage") == "pre-training":
            sets = st.get("shard_sets", [])
            against = sorted(set.intersection(*[set(s.get("decontaminated_against", [])) for s in sets])) if sets \
                else []
            parts.append(f"pre-trained on {len(sets)} ccmb shard set{'s' if len(sets) != 1 else ''}"
                         + (f" (decontaminated against {', '.join(against)})" if against else ""))
        elif st.get("stage") == "fine-tuning":
            parts.append(f"fine-tuned on {st.get('dataset')}/{st.get('split')}")
        elif st.get("stage") == "init":
            parts.append(f"from {st.get('from')}")
    if not parts:  # a record written before runs kept their stages
        against = td.get("decontaminated_against") or []
        return "trainer provenance" + (f" (decontaminated against {', '.join(against)})" if against else "")
    return f"ccmb train run {td.get('run', '?')}: " + "; ".join(parts)


def _copies_kept(td: Dict[str, Any], key: str) -> Optional[str]:
    """Why the evaluated set is seen according to the run's own decontamination reports (None if not)."""
    for st in td.get("stages", []):
        for s in st.get("shard_sets", []) if st.get("stage") == "pre-training" else []:
            found = (s.get("copies") or {}).get(key) or {}  # its images were dropped (the table was applied)
            if found.get("texts") and not s.get("captions_dropped"):
                return (f"the decontamination report found {found['texts']} text(s) of {key} in the corpus, and "
                        "caption matches were kept (--drop-caption-matches off)")
    return None


def classify(result: Dict[str, Any], decl: Declarations) -> TrainingInfo:
    """The training status of one result (see the module docstring)."""
    dataset, split = str(result.get("dataset")), str(result.get("split"))
    key = f"{dataset}/{split}"
    td = result.get("training_data") if isinstance(result.get("training_data"), dict) else {}
    decont = {True: "yes", False: "no"}.get(td.get("decontaminated"), "unknown")
    label = setting_status((result.get("settings") or {}).get("setting")
                           if isinstance(result.get("settings"), dict) else None)
    if td.get("provenance"):
        stages = td.get("stages") if isinstance(td.get("stages"), list) else []
        fine = [f"{st.get('dataset')}/{st.get('split')}" for st in stages
                if isinstance(st, dict) and st.get("stage") == "fine-tuning"]
        status, why = _status_from(fine, [], dataset, split, decl)
        kept = _copies_kept(td, key) if status == "zero-shot" else None
        if kept:
            status, why = "seen", kept
        return TrainingInfo(status, decont, _provenance_summary(td), why, "provenance")
    entry = decl.models.get(str(result.get("model")))
    if entry is not None:
        status, why = _status_from(entry["fine_tuned_on"], entry["seen"], dataset, split, decl)
        summary = ", ".join(entry["pretraining"]) or "pre-training not declared"
        if entry["fine_tuned_on"]:
            summary += "; fine-tuned on " + ", ".join(entry["fine_tuned_on"])
        if label and label != status and status != "seen":  # the user's own checkpoint under a registered name
            return TrainingInfo(label, decont, summary + " (overridden by --setting)", "declared by --setting",
                                "--setting")
        return TrainingInfo(status, decont, summary, why, entry["source"] or "model card")
    if label:
        return TrainingInfo(label, decont, "declared by --setting", "declared by --setting", "--setting")
    return TrainingInfo("unknown", decont, "not declared", "no provenance and no declaration for this model", "")


def result_field(training: Optional[Dict[str, Any]], dataset: str, split: str) -> Dict[str, Any]:
    """The ``training_data`` field of a result: the provenance plus ``decontaminated`` for this set
    (true/false when the pre-training shard sets are known, null otherwise)."""
    training = dict(training or {"provenance": False, "decontaminated_against": []})
    against = list(training.get("decontaminated_against", []))
    training["provenance"] = bool(training.get("provenance"))
    training["decontaminated_against"] = against
    stages = training.get("stages")
    pretrained = stages is None or any(isinstance(st, dict) and st.get("stage") == "pre-training" for st in stages)
    known = training["provenance"] and pretrained  # an official checkpoint fine-tuned here: its corpus unknown
    training["decontaminated"] = (f"{dataset}/{split}" in against) if known else None
    return training
