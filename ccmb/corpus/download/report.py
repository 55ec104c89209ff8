"""Refusals by reason and the pacing applied: what ``_stats.json``, the download summary and ``ccmb stats`` show.

A *refusal* is a row the download declined on purpose (not a failure of the site or of the image):

| category | row reasons (start of ``error_message``) |
|---|---|
| ``robots`` | ``robots_disallowed``, ``robots_unreachable`` |
| ``opt_out`` | ``opted out by X-Robots-Tag``, ``... Content-Usage``, ``... tdm-reservation``, ``... robots.txt Content-Usage`` |
| ``paced_out`` | ``host_paced_out`` (a host that kept failing, or asked to wait longer than ``--max-retry-after``) |
| ``private_address`` | ``private address refused`` |
| ``blocklist`` | ``blocklisted`` |

:func:`download_report` reads a download folder's records (light: JSON files only) for ``ccmb stats``.
"""
from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

from ...types import PathLike
from typing import Any, Dict, Iterable, List, Mapping, Optional, Tuple, Union

#: (category, reason prefixes), in the order shown.
CATEGORIES: Tuple[Tuple[str, Tuple[str, ...]], ...] = (
    ("robots", ("robots_disallowed", "robots_unreachable")),
    ("opt_out", ("opted out by",)),
    ("paced_out", ("host_paced_out",)),
    ("private_address", ("private address refused",)),
    ("blocklist", ("blocklisted",)),
)
#: Refusals that ``--retry-failed`` does not try again (a second request would be refused the same way).
FINAL_CATEGORIES = ("robots_disallowed", "opted out by", "private address refused", "blocklisted")


def refusal_category(message: Optional[str]) -> Optional[str]:
    """The refusal category of a row's ``error_message``, or None for an ordinary failure."""
    if not message:
        return None
    for category, prefixes in CATEGORIES:
        if message.startswith(prefixes):
            return category
    return None


def refusal_reason(message: str) -> str:
    """The reason of a refusal without its row-specific detail (``opted out by X-Robots-Tag``)."""
    return message.split(" (", 1)[0]


def refusal_counts(reason_counts: Mapping[str, int]) -> Dict[str, Dict[str, int]]:
    """``{category: {reason: rows}}`` from ``{error_message: rows}`` (every category present, maybe empty)."""
    out: Dict[str, Dict[str, int]] = {c: {} for c, _ in CATEGORIES}
    for message, n in reason_counts.items():
        category = refusal_category(message)
        if category is not None:
            reason = refusal_reason(message)
            out[category][reason] = out[category].get(reason, 0) + int(n)
    return out


def merge_refusals(total: Dict[str, Dict[str, int]], part: Mapping[str, Mapping[str, int]]) -> None:
    for category, reasons in part.items():
        bucket = total.setdefault(category, {})
        for reason, n in reasons.items():
            bucket[reason] = bucket.get(reason, 0) + int(n)


def merge_pacing(total: Dict[str, Any], part: Mapping[str, Any], limit: int = 20) -> None:
    """Add one shard's pacing record (:meth:`ccmb.corpus.download.pacing.PacingStats.to_dict`) into ``total``."""
    for key in ("requests", "robots_fetches", "throttled", "backoffs", "retries", "shards"):
        total[key] = total.get(key, 0) + int(part.get(key, 1 if key == "shards" else 0))
    total["waited_s"] = round(total.get("waited_s", 0.0) + float(part.get("waited_s", 0.0)), 3)
    for key in ("retry_after_max_s", "max_in_flight_per_host"):
        total[key] = max(total.get(key, 0), part.get(key, 0))
    delays = total.setdefault("crawl_delays", {})
    for host, d in dict(part.get("crawl_delays", {})).items():
        if host in delays or len(delays) < limit:
            delays[host] = max(delays.get(host, 0), d)
    for key in ("paused_hosts", "given_up_hosts"):
        hosts = total.setdefault(key, [])
        for h in part.get(key, []):
            if h not in hosts and len(hosts) < limit:
                hosts.append(h)


def shard_records(folder: PathLike) -> Iterable[Dict[str, Any]]:
    """The ``NNNNN_stats.json`` records of a folder, local or a URL (unreadable ones skipped)."""
    from ... import storage

    for path in storage.glob(folder, "[0-9]*_stats.json"):
        try:
            doc = json.loads(storage.read_text(path))
        except (OSError, ValueError):
            continue
        if isinstance(doc, dict):
            yield doc


def download_report(folder: Union[str, Path]) -> Optional[Dict[str, Any]]:
    """Refusals by category and reason, the pacing applied and the run's policy of a download folder, or None
    when ``folder`` holds no download record (a shard set built by ``build-shards``, a foreign set)."""
    from ... import storage

    folder = storage.location(folder)
    refusals: Dict[str, Dict[str, int]] = {c: {} for c, _ in CATEGORIES}
    pacing: Dict[str, Any] = {}
    found = False
    for doc in shard_records(folder):
        if "refusals" in doc:
            found = True
            merge_refusals(refusals, doc["refusals"])
        if isinstance(doc.get("pacing"), dict):
            found = True
            merge_pacing(pacing, doc["pacing"])
    policy = None
    try:
        state = json.loads(storage.read_text(storage.join(folder, "_ccmb", "state.json")))
        runs = state.get("runs") if isinstance(state, dict) else None
        if isinstance(runs, list) and runs and isinstance(runs[-1], dict):
            policy = runs[-1].get("policy")
            found = True
    except (OSError, ValueError):
        pass
    if not found:
        return None
    totals = {c: sum(r.values()) for c, r in refusals.items()}
    return {"refusals": totals, "refusal_reasons": refusals, "pacing": pacing, "policy": policy}


def format_report(report: Dict[str, Any]) -> List[str]:
    """Lines for ``ccmb stats`` and the download summary."""
    lines = ["refusals: " + ", ".join(f"{c} {n}" for c, n in report["refusals"].items())]
    for category, reasons in report["refusal_reasons"].items():
        for reason, n in sorted(reasons.items(), key=lambda kv: -kv[1]):
            lines.append(f"  {n:>8}  {reason}")
    p = report.get("pacing") or {}
    if p:
        lines.append(f"pacing: {p.get('requests', 0)} requests, {p.get('robots_fetches', 0)} robots.txt fetches, "
                     f"{p.get('throttled', 0)} throttled (429/503; longest Retry-After "
                     f"{p.get('retry_after_max_s', 0):g}s), {p.get('backoffs', 0)} backoffs, {p.get('retries', 0)} "
                     f"retries, at most {p.get('max_in_flight_per_host', 0)} requests in flight per host")
        if p.get("crawl_delays"):
            lines.append("  crawl-delay: " + ", ".join(f"{h} {d:g}s" for h, d in p["crawl_delays"].items()))
        if p.get("paused_hosts"):
            lines.append("  paused hosts: " + ", ".join(p["paused_hosts"]))
        if p.get("given_up_hosts"):
            lines.append("  given up: " + ", ".join(p["given_up_hosts"]))
    policy = report.get("policy") or {}
    if policy:
        pc = policy.get("pacing", {})
        lines.append(f"policy: user agent {policy.get('user_agent')!r}; robots.txt "
                     f"{'honoured' if policy.get('robots_txt') else 'IGNORED (--ignore-robots)'}; private addresses "
                     f"{policy.get('private_addresses')}; per host at most {pc.get('host_concurrency')} at once and "
                     f"{pc.get('host_rate_per_s')}/s")
    return lines


def reason_counter(messages: Iterable[Optional[str]]) -> Counter:
    return Counter(m for m in messages if m)
