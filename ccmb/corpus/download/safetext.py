"""Text that came from a server, made safe to store, log and print.

A status line, a header value, a robots.txt line or an exception quoting them may carry terminal escape
sequences (``ESC[2J``), carriage returns that overwrite a line, or bidirectional overrides that reorder
it. :func:`escape_controls` writes every C0/C1 control character, DEL and the bidi controls as a visible
escape (``\\x1b``, ``\\u202e``) and caps the length, so a message can always be shown as it is.
"""
from __future__ import annotations

import re

MAX_MESSAGE_CHARS = 500

_UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\u200e\u200f\u202a-\u202e\u2066-\u2069\u061c\ufeff]")


def _escape(match: "re.Match[str]") -> str:
    code = ord(match.group())
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def escape_controls(text: object, limit: int = MAX_MESSAGE_CHARS) -> str:
    """``str(text)`` with control and bidi characters escaped, cut to ``limit`` characters (``...`` added)."""
    s = text if isinstance(text, str) else str(text)
    if len(s) > limit:
        s = s[:limit] + "..."
    return _UNSAFE.sub(_escape, s)
