""""Did you mean" for unknown names (datasets, models, configs, splits): one message format everywhere.

Light (standard library only), so the command lines can check names before importing torch.
"""
from __future__ import annotations

import difflib
from typing import Iterable, List, Optional


def close_matches(name: str, known: Iterable[str], n: int = 3) -> List[str]:
    """Up to ``n`` known names that look like ``name`` (case-insensitive): those containing it (``vitl`` finds
    ``r2d2-vitl14``), else the closest spellings (difflib)."""
    known = list(dict.fromkeys(known))
    lower = {k.lower(): k for k in known}
    key = name.strip().lower()
    found = [k for k in known if key in k.lower()] if len(key) >= 3 else []
    if not found:
        found = [lower[m] for m in difflib.get_close_matches(key, list(lower), n=n, cutoff=0.6)]
    return found[:n]


def did_you_mean(name: str, known: Iterable[str]) -> str:
    """``" (did you mean 'icr'?)"`` (or ``'a' or 'b'``), or ``""`` when nothing is close."""
    found = close_matches(name, known)
    if not found:
        return ""
    return " (did you mean " + " or ".join(repr(f) for f in found) + "?)"


def unknown(kind: str, name: str, known: Iterable[str], extra: Optional[str] = None) -> str:
    """``unknown dataset 'icrr' (did you mean 'icr'?); known: icm, iqm, ...`` (``extra`` appended to the list,
    e.g. ``"or a model directory"``)."""
    known = list(dict.fromkeys(known))
    listing = ", ".join(known) + (f", {extra}" if extra else "")
    return f"unknown {kind} {name!r}{did_you_mean(name, known)}; known: {listing}"


def and_list(items: Iterable[str]) -> str:
    """``a``, ``a and b``, ``a, b and c``."""
    items = list(items)
    if len(items) <= 1:
        return "".join(items)
    return ", ".join(items[:-1]) + " and " + items[-1]
