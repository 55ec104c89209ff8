"""Bounded JSON parsing for untrusted input lines (corpus rows, dataset annotation files).

``json.loads`` recurses once per nesting level, so a 2 KB line of 1,000 ``[`` raises ``RecursionError``
(not ``ValueError``) and aborts the whole job; and a multi-gigabyte line is parsed into memory whole.
``loads_bounded`` checks the size and the nesting depth first, with a scan that itself never recurses,
and reports every problem as a ``ValueError`` with a short reason, so callers count it as a located,
per-line failure.
"""
from __future__ import annotations

import json
import re
from typing import Any

DEFAULT_MAX_DEPTH = 64
DEFAULT_MAX_BYTES = 1_000_000

# Characters that matter for nesting: brackets, and quotes/backslashes (so brackets inside strings don't count).
_SPECIAL = re.compile(r'[\[\]{}"\\]')


def _utf8_size(text: str, limit: int) -> int:
    """Size of ``text`` in UTF-8 bytes (exact when it may exceed ``limit``; a cheap bound otherwise)."""
    if len(text) * 4 <= limit:  # at most 4 bytes per code point: cannot exceed the limit
        return len(text)
    return len(text.encode("utf-8", "surrogatepass"))


def nesting_depth(text: str) -> int:
    """Deepest nesting of ``[``/``{`` in a JSON text (brackets inside strings ignored); never recurses."""
    if "[" not in text and "{" not in text:
        return 0
    depth = deepest = 0
    in_string = False
    skip_to = 0  # position after an escaped character
    for match in _SPECIAL.finditer(text):  # one linear pass, whatever the input
        pos = match.start()
        if pos < skip_to:
            continue
        char = text[pos]
        if in_string:
            if char == "\\":
                skip_to = pos + 2
            elif char == '"':
                in_string = False
        elif char == '"':
            in_string = True
        elif char in "[{":
            depth += 1
            if depth > deepest:
                deepest = depth
        elif char in "]}":
            depth -= 1
    return deepest


def loads_bounded(text: str, *, max_depth: int = DEFAULT_MAX_DEPTH, max_bytes: int = DEFAULT_MAX_BYTES) -> Any:
    """``json.loads`` that refuses lines over ``max_bytes`` bytes or nested deeper than ``max_depth`` levels.

    Every failure (too big, too deep, not JSON) is a ``ValueError`` with a short reason, e.g.
    ``"nested deeper than 64 levels"`` or ``"line longer than 1000000 bytes"``.
    """
    if isinstance(text, (bytes, bytearray)):
        if len(text) > max_bytes:
            raise ValueError(f"line longer than {max_bytes} bytes")
        text = bytes(text).decode("utf-8")
    elif _utf8_size(text, max_bytes) > max_bytes:
        raise ValueError(f"line longer than {max_bytes} bytes")
    # Cheap common case: fewer brackets than the limit means the depth cannot exceed it.
    if text.count("[") + text.count("{") > max_depth and nesting_depth(text) > max_depth:
        raise ValueError(f"nested deeper than {max_depth} levels")
    try:
        return json.loads(text)
    except RecursionError:  # backstop (e.g. a tiny interpreter recursion limit): never escape as RecursionError
        raise ValueError(f"nested deeper than {max_depth} levels") from None
