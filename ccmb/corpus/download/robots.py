"""robots.txt (RFC 9309), read once per site and cached, for ccmb's own product tokens.

* **Groups**: the rules of every group whose ``User-agent`` names one of :data:`TOKENS` (``ccmb``, and
  ``img2dataset``, the name sites already list for this kind of crawler) are combined; when no group names
  them, the ``*`` groups are used; without either, everything is allowed. Names match case-insensitively.
* **Rules**: ``Allow``/``Disallow`` path patterns with ``*`` and ``$``, matched against the URL's path and
  query after percent-encoding normalisation; the longest matching pattern wins, ``Allow`` on a tie;
  ``/robots.txt`` itself is always allowed. ``Crawl-delay`` (not in the RFC, widely used) is read from the
  same groups. ``Content-Usage`` lines (IETF AIPREF, an extension of RFC 9309) attach usage preferences to
  paths: ``Content-Usage: /photos/ train-ai=n``.
* **Fetching** (:class:`RobotsCache`): ``scheme://host:port/robots.txt`` per authority, up to
  :data:`MAX_ROBOTS_BYTES` (the rest is ignored), at most 5 redirects; 2xx: parsed; 4xx ("unavailable"):
  everything allowed; 5xx, 429 or unreachable: everything **disallowed** until it is fetched again after
  ``error_ttl`` seconds. A parsed or unavailable file is kept for :data:`ROBOTS_TTL` (24 h, the RFC's bound).
"""
from __future__ import annotations

import re
import threading
import time
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Sequence, Tuple
from urllib.parse import quote, urlsplit

from .safetext import escape_controls

#: The product tokens whose groups apply to ccmb (lower case).
TOKENS = ("ccmb", "img2dataset")
MAX_ROBOTS_BYTES = 512 * 1024
ROBOTS_TTL = 24 * 3600.0
ERROR_TTL = 600.0
MAX_ROBOTS_REDIRECTS = 5
#: Longest Crawl-delay taken from a file (seconds); longer values are read as this (a host whose delay is
#: longer still is paced at this interval: one request per 5 minutes).
MAX_CRAWL_DELAY = 300.0

DISALLOWED = "robots_disallowed"
UNREACHABLE = "robots_unreachable"

_KEYS = {"user-agent": "user-agent", "useragent": "user-agent", "user agent": "user-agent",
         "allow": "allow", "disallow": "disallow", "dissallow": "disallow", "dissalow": "disallow",
         "disalow": "disallow", "diasllow": "disallow", "disallaw": "disallow",
         "crawl-delay": "crawl-delay", "crawldelay": "crawl-delay", "content-usage": "content-usage"}
_PRINTABLE_ASCII = "".join(chr(c) for c in range(33, 127))
_HEX2 = re.compile(r"[0-9A-Fa-f]{2}")
_UNRESERVED = set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")


def normalize_path(text: str) -> str:
    """Percent-encoding normalised for comparison: non-ASCII as UTF-8 %XX, %XX of unreserved characters
    decoded, other %xx upper-cased (RFC 9309 2.2.2)."""
    if not text.isascii():
        text = quote(text, safe=_PRINTABLE_ASCII)  # non-ASCII (and spaces) as UTF-8 %XX; %XX already there kept
    if "%" not in text:
        return text
    out = []
    i = 0
    while i < len(text):
        c = text[i]
        if c == "%" and i + 2 < len(text) and _HEX2.match(text, i + 1):
            ch = chr(int(text[i + 1:i + 3], 16))
            out.append(ch if ch in _UNRESERVED else "%" + text[i + 1:i + 3].upper())
            i += 3
        else:
            out.append(c)
            i += 1
    return "".join(out)


@dataclass
class _Rule:
    pattern: str
    allow: bool
    regex: Optional["re.Pattern[str]"]  # None: a plain prefix

    def matches(self, path: str) -> bool:
        if self.regex is None:
            return path.startswith(self.pattern)
        return self.regex.match(path) is not None


def _rule(pattern: str, allow: bool) -> _Rule:
    if not pattern.startswith(("/", "*")):
        pattern = "/" + pattern
    pattern = normalize_path(pattern)
    if "*" not in pattern and not pattern.endswith("$"):
        return _Rule(pattern, allow, None)
    end = pattern.endswith("$")
    body = pattern[:-1] if end else pattern
    regex = ".*".join(re.escape(part) for part in body.split("*")) + ("$" if end else "")
    return _Rule(pattern, allow, re.compile(regex, re.DOTALL))


@dataclass
class Rules:
    """The rules of a robots.txt that apply to ccmb (:func:`parse`)."""

    rules: List[_Rule] = field(default_factory=list)
    crawl_delay: Optional[float] = None
    usage: List[Tuple[str, str]] = field(default_factory=list)  # (path prefix, Content-Usage value)
    groups: str = ""  # which groups applied: "ccmb", "img2dataset", "*" or "" (none)

    def check(self, path: str) -> Optional[str]:
        """The rule that disallows ``path`` (path and query of a URL), or None when it may be fetched."""
        if path == "/robots.txt":
            return None
        path = normalize_path(path or "/")
        best: Optional[_Rule] = None
        for rule in self.rules:
            if rule.matches(path):
                if (best is None or len(rule.pattern) > len(best.pattern)
                        or (len(rule.pattern) == len(best.pattern) and rule.allow and not best.allow)):
                    best = rule
        if best is None or best.allow:
            return None
        return f"Disallow: {best.pattern}"

    def content_usage(self, path: str) -> Optional[str]:
        """The ``Content-Usage`` value for ``path`` (the longest matching path prefix), or None."""
        path = normalize_path(path or "/")
        best: Optional[Tuple[str, str]] = None
        for prefix, value in self.usage:
            if path.startswith(prefix) and (best is None or len(prefix) > len(best[0])):
                best = (prefix, value)
        return best[1] if best else None


def _agent_name(value: str) -> str:
    return re.split(r"[\s/]", value.strip(), maxsplit=1)[0].lower() if value.strip() else ""


def parse(text: str, tokens: Sequence[str] = TOKENS) -> Rules:
    """The rules of ``text`` for ``tokens`` (combined groups naming them, else the ``*`` groups)."""
    groups: List[Tuple[List[str], List[Tuple[str, str]]]] = []
    agents: Optional[List[str]] = None
    lines: Optional[List[Tuple[str, str]]] = None
    for raw in text.splitlines():
        line = raw.split("#", 1)[0].strip()
        if ":" not in line:
            continue
        key, value = line.split(":", 1)
        key = _KEYS.get(key.strip().lower())
        value = value.strip()
        if key is None:
            continue
        if key == "user-agent":
            if lines is None or lines:  # a new group (the previous one had rules)
                agents, lines = [], []
                groups.append((agents, lines))
            agents.append(_agent_name(value))
        elif lines is not None:  # rules before any user-agent line belong to no group
            lines.append((key, value))
    wanted = {t.lower() for t in tokens}
    chosen = [g for g in groups if wanted & set(g[0])]
    which = ",".join(sorted(wanted & {a for g in chosen for a in g[0]}))
    if not chosen:
        chosen = [g for g in groups if "*" in g[0]]
        which = "*" if chosen else ""
    rules = Rules(groups=which)
    for _, lines_ in chosen:
        for key, value in lines_:
            if key in ("allow", "disallow"):
                if value:
                    rules.rules.append(_rule(value, key == "allow"))
            elif key == "crawl-delay":
                try:
                    delay = float(value)
                except ValueError:
                    continue
                if delay == delay and delay > 0:  # not NaN
                    delay = min(delay, MAX_CRAWL_DELAY)
                    rules.crawl_delay = max(rules.crawl_delay or 0.0, delay)
            elif key == "content-usage" and value:
                first, _, rest = value.partition(" ")
                if first.startswith("/"):
                    rules.usage.append((normalize_path(first), rest.strip()))
                else:
                    rules.usage.append(("/", value))
    return rules


# ----------------------------------------------------------------------------------------------- cache

@dataclass
class Entry:
    """What is known of one authority's robots.txt."""

    url: str
    rules: Optional[Rules]  # None while unreachable (everything disallowed)
    expires: float
    problem: str = ""  # why it is unreachable (escaped)

    def refusal(self, path: str) -> Optional[str]:
        """The row's failure reason when ``path`` may not be fetched, else None."""
        if self.rules is None and self.problem.startswith("private address refused"):
            return self.problem  # the guard refused the site itself: counted as such
        if self.rules is None:
            return f"{UNREACHABLE} ({self.url}: {self.problem}; the site is not crawled until it can be read)"
        rule = self.rules.check(path)
        if rule:
            return f"{DISALLOWED} ({self.url}: {escape_controls(rule, 200)})"
        return None


Fetcher = Callable[[str], bytes]  # GET a robots.txt URL (raises http_fetch errors)


class RobotsCache:
    """robots.txt per authority (``scheme://host:port``), fetched on first use, kept until it expires.

    Thread-safe; one per worker process (:func:`cache`). :meth:`entry` returns the cached entry or None
    (then the caller fetches it with :meth:`fetch`, holding the host's pacing slot)."""

    def __init__(self, error_ttl: float = ERROR_TTL, ttl: float = ROBOTS_TTL) -> None:
        self.error_ttl = error_ttl
        self.ttl = ttl
        self._entries: Dict[str, Entry] = {}
        self._lock = threading.Lock()
        self.fetches = 0

    @staticmethod
    def url_of(url: str) -> str:
        parts = urlsplit(url)
        scheme = parts.scheme.lower()
        host = (parts.hostname or "").lower()
        if ":" in host:
            host = f"[{host}]"
        port = parts.port
        default = 443 if scheme == "https" else 80
        return f"{scheme}://{host}{'' if port in (None, default) else f':{port}'}/robots.txt"

    def entry(self, robots_url: str, now: Optional[float] = None) -> Optional[Entry]:
        with self._lock:
            e = self._entries.get(robots_url)
        if e is not None and e.expires > (time.monotonic() if now is None else now):
            return e
        return None

    def fetch(self, robots_url: str, get: Fetcher) -> Entry:
        """Fetch and parse ``robots_url`` with ``get`` (status handling of RFC 9309 2.3.1), cache and return it."""
        from .http_fetch import REDIRECT_LOOP, HTTPStatusError

        self.fetches += 1
        now = time.monotonic()
        try:
            body = get(robots_url)
            text = body.decode("utf-8", errors="replace").lstrip("\ufeff")
            e = Entry(robots_url, parse(text), now + self.ttl)
        except HTTPStatusError as exc:
            if 400 <= exc.status < 500 and exc.status != 429:  # unavailable: no restriction
                e = Entry(robots_url, Rules(), now + self.ttl)
            else:
                e = Entry(robots_url, None, now + self.error_ttl, escape_controls(exc, 200))
        except Exception as exc:  # unreachable: network error, deadline, refused address ...
            text = escape_controls(str(exc) or type(exc).__name__, 200)
            if text.startswith(REDIRECT_LOOP):  # more than 5 redirects: unavailable (RFC 9309 2.3.1.2)
                e = Entry(robots_url, Rules(), now + self.ttl)
            else:
                e = Entry(robots_url, None, now + self.error_ttl, text)
        with self._lock:
            self._entries[robots_url] = e
        return e


def robots_path(url: str) -> str:
    """Path and query of ``url``: what the rules are matched against."""
    parts = urlsplit(url)
    return (parts.path or "/") + ("?" + parts.query if parts.query else "")
