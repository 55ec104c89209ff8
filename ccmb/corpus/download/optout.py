"""Machine-readable opt-outs on a response, checked before its body is kept.

* ``X-Robots-Tag`` with ``noai``, ``noimageai``, ``noindex``, ``noimageindex`` or ``none`` (img2dataset's
  set, plus ``none`` = ``noindex, nofollow``), for every crawler or for one of ccmb's tokens
  (``X-Robots-Tag: img2dataset: noai``);
* IETF AIPREF ``Content-Usage`` (a structured-field dictionary, RFC 9651): the preference for AI training,
  ``train-ai``, or when absent its parent category ``bots`` (automated processing); ``n`` refuses. The same
  value may come from robots.txt (``Content-Usage:`` lines, :mod:`ccmb.corpus.download.robots`);
* W3C TDMRep ``tdm-reservation: 1`` (text and data mining rights reserved).

Each refusal is a row failure whose reason starts with ``opted out by <mechanism>``, counted per mechanism.
"""
from __future__ import annotations

from typing import Iterable, List, Optional, Sequence

from .robots import TOKENS
from .safetext import escape_controls

#: X-Robots-Tag directives that refuse use for training data.
X_ROBOTS_DIRECTIVES = frozenset({"noai", "noimageai", "noindex", "noimageindex", "none"})
#: X-Robots-Tag directives that take a value after a colon (so "name: value" is not a crawler name).
_VALUED = frozenset({"unavailable_after", "max-snippet", "max-image-preview", "max-video-preview"})
#: AIPREF usage categories that cover ccmb's use, most specific first.
USAGE_CATEGORIES = ("train-ai", "bots")
OPTED_OUT = "opted out by"


def x_robots_tag(values: Iterable[str], tokens: Sequence[str] = TOKENS) -> Optional[str]:
    """The refusing directive of ``X-Robots-Tag`` header values for ``tokens``, or None."""
    wanted = {t.lower() for t in tokens}
    for value in values:
        agent: Optional[str] = None
        for part in value.split(","):
            part = part.strip()
            name, colon, rest = part.partition(":")
            name = name.strip().lower()
            if colon and name not in _VALUED and " " not in name:
                agent, directive = name.split("/")[0], rest.strip().lower()
            else:
                directive = name
            if directive in X_ROBOTS_DIRECTIVES and (agent is None or agent in wanted):
                return f"{agent}: {directive}" if agent else directive
    return None


def parse_usage(value: str) -> dict:
    """A ``Content-Usage`` value as {key: token} (an RFC 9651 dictionary; parameters and other members ignored;
    a bare key means true, ``?1``). Later members override earlier ones, as in RFC 9651."""
    out = {}
    for member in value.split(","):
        member = member.split(";", 1)[0].strip()
        if not member:
            continue
        key, eq, val = member.partition("=")
        key = key.strip().lower()
        val = val.strip().strip('"').lower() if eq else "?1"
        if key:
            out[key] = val
    return out


def usage_refused(values: Iterable[str]) -> Optional[str]:
    """The refusing preference (``train-ai=n``) of ``Content-Usage`` values, or None.

    Several values combine like the AIPREF processing rules: a ``n`` anywhere wins over ``y``."""
    found: List[str] = []
    for value in values:
        prefs = parse_usage(value)
        for category in USAGE_CATEGORIES:  # the most specific category stated decides
            if category in prefs:
                if prefs[category] == "n":
                    found.append(f"{category}=n")
                break
    return found[0] if found else None


def check(headers, tokens: Sequence[str] = TOKENS) -> Optional[str]:
    """The row's failure reason when response ``headers`` (an ``http.client.HTTPMessage``) opt out, else None."""
    directive = x_robots_tag(headers.get_all("X-Robots-Tag") or [], tokens)
    if directive:
        return f"{OPTED_OUT} X-Robots-Tag ({escape_controls(directive, 100)})"
    usage = usage_refused(headers.get_all("Content-Usage") or [])
    if usage:
        return f"{OPTED_OUT} Content-Usage ({usage})"
    for value in headers.get_all("tdm-reservation") or []:
        if value.strip() == "1":
            return f"{OPTED_OUT} tdm-reservation (1)"
    return None


def robots_usage_refused(value: Optional[str]) -> Optional[str]:
    """The failure reason for a robots.txt ``Content-Usage`` value that refuses, else None."""
    usage = usage_refused([value]) if value else None
    return f"{OPTED_OUT} robots.txt Content-Usage ({usage})" if usage else None
