"""Evaluation protocols as data: what each reference evaluation does, and the ``official``/``strict`` choice.

A dataset's registry entry names its reference evaluation (``DatasetSpec.protocol`` and ``protocol_version``).
``--protocol official`` (the default) follows that reference; ``--protocol strict`` applies ccmb's own,
more conservative rules everywhere. The rules that differ:

- ``per_line``: every annotation line is one query and one candidate (R2D2), instead of identical texts
  merged into one query with several positives and repeated lines dropped (strict);
- ``ties``: how a candidate scoring exactly as much as the best positive is ordered: ``against`` (strict:
  every tied negative ranks before the positive), ``numpy`` (the position in ``np.argsort(row)[::-1]``, as
  R2D2's ``itm_eval``), ``first`` (a stable descending sort: the earlier candidate first, as Python's
  ``sorted(..., reverse=True)`` in Chinese-CLIP), ``torch-topk`` (the order of ``torch.topk``, as
  CLIP_benchmark);
- ``no_positive``: per direction, a query without any positive is ``skip``-ped (strict) or counted as a
  ``miss`` in the denominator (Chinese-CLIP text-to-image);
- ``candidate_order``: ``file`` (annotation order) or ``id-bytes`` (Chinese-CLIP reads its images from an
  LMDB whose cursor returns them sorted by the UTF-8 bytes of their ids: ties fall to the smaller id);
- ``clean_text``: text preprocessing before tokenising (Chinese-CLIP: lower case, curly quotes to ``"``);
- ``context_length``: tokens kept per text (Chinese-CLIP: 52), for models whose own limit is longer;
- ``reader``: whose reading of the annotation files the evaluation follows (``r2d2``: R2D2's datasets,
  ``chinese-clip``: Chinese-CLIP's evaluation scripts; None: the data as ccmb's loader reads it). Where
  that reader fails on a file, the official protocol refuses it with the reason.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Dict, Optional, Tuple

PROTOCOL_NAMES = ("official", "strict")
DEFAULT_PROTOCOL = "official"
STRICT_VERSION = "ccmb-strict-1"


class ProtocolError(ValueError):
    """An unknown protocol name, or results whose protocols do not agree."""


@dataclass(frozen=True)
class Rules:
    """How one evaluation turns scores into metrics (see the module docstring)."""

    reference: str
    version: str
    per_line: bool = False
    ties: str = "against"
    no_positive: Dict[str, str] = field(default_factory=lambda: {"i2t": "skip", "t2i": "skip"})
    candidate_order: Dict[str, str] = field(default_factory=lambda: {"i2t": "file", "t2i": "file"})
    clean_text: Optional[str] = None
    context_length: Optional[int] = None  # tokens kept per text (None: the model's own limit)
    reader: Optional[str] = None  # the reference's own reading of the files (None: ccmb's loader)

    def describe(self) -> Dict[str, Any]:
        return asdict(self)


#: the reference evaluations named by the dataset registry (``DatasetSpec.protocol``)
REFERENCES: Dict[str, Rules] = {
    "r2d2": Rules(reference="R2D2 itm_eval / sklearn roc_auc_score", version="", per_line=True, ties="numpy",
                  no_positive={"i2t": "miss", "t2i": "miss"}, reader="r2d2"),
    "chinese-clip": Rules(reference="Chinese-CLIP make_topk_predictions(_tr) + evaluation(_tr)", version="",
                          ties="first", no_positive={"i2t": "skip", "t2i": "miss"},
                          candidate_order={"i2t": "file", "t2i": "id-bytes"}, clean_text="chinese-clip",
                          context_length=52, reader="chinese-clip"),
    "clip-benchmark": Rules(reference="CLIP_benchmark zeroshot_classification", version="", ties="torch-topk"),
    "ccmb": Rules(reference="ccmb", version=STRICT_VERSION),
}

STRICT = Rules(reference="ccmb strict", version=STRICT_VERSION)

#: what the reference evaluates per task (a result names only the part that applies to its task)
TASK_REFERENCES: Dict[Tuple[str, str], str] = {
    ("r2d2", "retrieval"): "R2D2 itm_eval (train_r2d2_retrieval.py)",
    ("r2d2", "matching"): "sklearn roc_auc_score (R2D2 train_r2d2_matching.py)",
    ("chinese-clip", "retrieval"): REFERENCES["chinese-clip"].reference,
    ("clip-benchmark", "classification"): REFERENCES["clip-benchmark"].reference,
}


@dataclass(frozen=True)
class Protocol:
    """The protocol a run uses for one dataset: its name (official/strict) and the rules."""

    name: str
    rules: Rules

    def to_result(self) -> Dict[str, str]:
        """The ``protocol`` field of a result JSON (contract: name, reference, version)."""
        return {"name": self.name, "reference": self.rules.reference, "version": self.rules.version}


def resolve(name: str, spec: Any) -> Protocol:
    """The protocol ``name`` (``official``/``strict``) for dataset ``spec`` (a registry entry)."""
    if name not in PROTOCOL_NAMES:
        raise ProtocolError(f"unknown protocol {name!r}; use one of {', '.join(PROTOCOL_NAMES)}")
    if name == "strict":
        return Protocol("strict", STRICT)
    key = getattr(spec, "protocol", "ccmb") or "ccmb"
    if key not in REFERENCES:
        raise ProtocolError(f"dataset {getattr(spec, 'name', '?')}: unknown reference protocol {key!r}; "
                            f"known: {', '.join(REFERENCES)}")
    base = REFERENCES[key]
    version = getattr(spec, "protocol_version", "") or base.version
    reference = TASK_REFERENCES.get((key, str(getattr(spec, "task", ""))), base.reference)
    return Protocol("official", Rules(**{**base.describe(), "version": version, "reference": reference}))


def evaluation_rules(data: Any, rules: Optional[Rules] = None, data_format: str = "") -> Tuple[Rules, str]:
    """The rules and registry format a task evaluator applies to ``data``: the given ``rules`` win; by default
    the **official** protocol of the registered dataset named ``data.name`` (as ``ccmb-bench run``), and the
    strict rules only for data that is no registered dataset (nothing to follow)."""
    if rules is not None:
        return rules, data_format
    from ccmb.datasets import UnknownDatasetError, get_spec

    try:
        spec = get_spec(str(getattr(data, "name", "")))
    except UnknownDatasetError:
        return STRICT, data_format
    return resolve(DEFAULT_PROTOCOL, spec).rules, data_format or spec.format


def clean_text(text: str, how: Optional[str]) -> str:
    """Text preprocessing of a reference evaluation (``chinese-clip``: lower case, curly double quotes to ``"``)."""
    if how is None:
        return text
    if how == "chinese-clip":
        return text.lower().replace("\u201c", '"').replace("\u201d", '"')
    raise ProtocolError(f"unknown text cleaning {how!r}")


def detail(protocol: Any, task: str) -> str:
    """A result's protocol in words for the leaderboard: the reference evaluation of its task and the version,
    e.g. ``R2D2 itm_eval (train_r2d2_retrieval.py), yuxie11/R2D2@6c9f74a`` (results written before references
    were per task named both parts: only the one of ``task`` is kept)."""
    if not isinstance(protocol, dict):
        return ""
    reference = str(protocol.get("reference") or "").strip()
    if " / " in reference:  # "R2D2 itm_eval / sklearn roc_auc_score": one part per task
        parts = reference.split(" / ")
        reference = next((p for p in parts if ("roc_auc" in p) == (task == "matching")), reference)
    version = str(protocol.get("version") or "").strip()
    if version and version not in reference:
        return f"{reference}, {version}" if reference else version
    return reference


def protocol_key(result: Dict[str, Any]) -> str:
    """``name/version`` of a result's protocol (``unknown`` for results written before protocols existed)."""
    p = result.get("protocol")
    if not isinstance(p, dict):
        return "unknown"
    return f"{p.get('name', '?')}/{p.get('version', '?')}"
