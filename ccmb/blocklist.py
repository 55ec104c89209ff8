"""Hash, URL and domain blocklists: a takedown or opt-out list applied to a download or an existing corpus.

A list file holds one entry per line (``#`` starts a comment; blank lines are skipped):

* 32 hex digits: an **MD5**, 64 hex digits: a **SHA-256** of an image (``md5:``/``sha256:`` prefixes allowed);
* ``http://`` or ``https://``: a **URL** (compared after normalising scheme and host case, default port and
  fragment away);
* anything else: a **domain** (``example.com``, ``*.example.com`` or ``.example.com``), which blocks that
  host and every host under it (``domain:`` prefix allowed).

Hashes are compared with a row's ``md5``/``sha256`` (the stored image) and ``original_md5`` (the image as
downloaded) columns when present; URLs with ``url`` and ``page_url``; domains with their hosts. During
``ccmb download`` the original bytes' MD5 and SHA-256 are checked too.

:func:`blocked` is the pure step over Arrow data (any engine can apply it to its batches):
``reasons = blocked(batch, blocklist)`` gives per row ``None`` or the reason (``"blocklisted (md5 ...)"``);
with ``codes=True`` one of :data:`REASON_CODES` (``blocklist_md5``, ``blocklist_sha256``, ``blocklist_url``,
``blocklist_domain``), the decision reasons ``ccmb build-shards --blocklist`` counts
(:mod:`ccmb.corpus.steps.combine`). Not the text-term list of ``ccmb filter --blocklist``.
"""
from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import FrozenSet, Iterable, Optional, Sequence, Union
from urllib.parse import urlsplit, urlunsplit

import pyarrow as pa
import pyarrow.compute as pc

BLOCKLISTED = "blocklisted"
#: The decision reason of each kind of entry (``ccmb build-shards --blocklist``; hashes of the stored or the
#: original image alike).
REASON_CODES = {"md5": "blocklist_md5", "sha256": "blocklist_sha256", "url": "blocklist_url",
                "domain": "blocklist_domain"}
#: Columns :func:`blocked` reads when present.
HASH_COLUMNS = ("md5", "sha256", "original_md5")
URL_COLUMNS = ("url", "page_url")
#: Longest line accepted (a URL); longer lines are an error naming the line.
MAX_LINE = 16384

_HEX = re.compile(r"^[0-9a-f]+$")
#: The host of an absolute URL (Arrow regex: RE2 syntax).
_HOST_RE = r"^[A-Za-z][A-Za-z0-9+.-]*://(?:[^/?#]*@)?(?P<host>\[[^\]]*\]|[^:/?#\[\]]*)(?P<rest>[^/?#]*)"
#: A host the pattern reads as :func:`host_of` does (otherwise :func:`url_hosts_of` asks :func:`host_of`).
_PLAIN_HOST_RE = r"^[a-z0-9_-]+(\.[a-z0-9_-]+)*$"
#: URLs :func:`normalize_url` leaves as they are (lower-case http(s) scheme and ASCII host, no port, user or
#: fragment, a path, a non-empty query if any, printable ASCII only): matched without normalising.
_NORMAL_URL_RE = r"^https?://[a-z0-9_-]+(\.[a-z0-9_-]+)*/[\x21\x22\x24-\x3e\x40-\x7e]*(\?[\x21\x22\x24-\x7e]+)?$"
_DOMAIN = re.compile(r"^(?=.{1,253}$)([a-z0-9_]([a-z0-9_-]{0,61}[a-z0-9_])?\.)*[a-z0-9_]([a-z0-9_-]{0,61}[a-z0-9_])?$")


class BlocklistError(ValueError):
    """A blocklist file cannot be read; the message names the file and line."""


def normalize_url(url: str) -> str:
    """``url`` for exact comparison: scheme and host lower case, default port and fragment dropped."""
    try:
        parts = urlsplit(url.strip())
        scheme = parts.scheme.lower()
        host = (parts.hostname or "").rstrip(".")
        port = parts.port
    except ValueError:
        return url.strip()
    if ":" in host:
        host = f"[{host}]"
    netloc = host if port is None or port == {"http": 80, "https": 443}.get(scheme) else f"{host}:{port}"
    return urlunsplit((scheme, netloc, parts.path or "/", parts.query, ""))


def host_of(url: Optional[str]) -> str:
    """The lower-case host of ``url`` ("" when it has none)."""
    if not url:
        return ""
    try:
        return (urlsplit(url.strip()).hostname or "").rstrip(".")
    except ValueError:
        return ""


@dataclass(frozen=True)
class Blocklist:
    """The entries of one or more list files (:meth:`load`)."""

    md5: FrozenSet[str] = frozenset()
    sha256: FrozenSet[str] = frozenset()
    urls: FrozenSet[str] = frozenset()
    domains: FrozenSet[str] = frozenset()
    sources: tuple = field(default=(), compare=False)
    digest: str = ""  # SHA-256 of the sorted entries: identifies the list in a run's record

    def __len__(self) -> int:
        return len(self.md5) + len(self.sha256) + len(self.urls) + len(self.domains)

    @classmethod
    def load(cls, paths: Union[str, Path, Sequence[Union[str, Path]]]) -> "Blocklist":
        if isinstance(paths, (str, Path)):
            paths = [paths]
        md5, sha, urls, domains = set(), set(), set(), set()
        for path in paths:
            path = Path(path)
            try:
                fh = open(path, "rb")
            except OSError as exc:
                raise BlocklistError(f"{path}: cannot read the blocklist: {exc.strerror or exc}") from None
            with fh:
                for lineno, raw in enumerate(iter(lambda: fh.readline(MAX_LINE + 1), b""), 1):
                    if len(raw) > MAX_LINE:
                        raise BlocklistError(f"{path}:{lineno}: line longer than {MAX_LINE} bytes")
                    try:
                        line = raw.decode("utf-8").split("#", 1)[0].strip()
                    except UnicodeDecodeError:
                        raise BlocklistError(f"{path}:{lineno}: not UTF-8 text") from None
                    if not line:
                        continue
                    kind, entry = _classify(line)
                    if kind is None:
                        raise BlocklistError(f"{path}:{lineno}: not an MD5, SHA-256, http(s) URL or domain: "
                                             f"{line[:80]!r}")
                    {"md5": md5, "sha256": sha, "url": urls, "domain": domains}[kind].add(entry)
        h = hashlib.sha256()
        for kind, entries in (("md5", md5), ("sha256", sha), ("url", urls), ("domain", domains)):
            for e in sorted(entries):
                h.update(f"{kind}:{e}\n".encode())
        return cls(frozenset(md5), frozenset(sha), frozenset(urls), frozenset(domains),
                   tuple(str(p) for p in paths), h.hexdigest())

    def describe(self) -> dict:
        """What the list holds (for a run's record)."""
        return {"files": list(self.sources), "sha256": self.digest, "md5": len(self.md5), "sha256_hashes":
                len(self.sha256), "urls": len(self.urls), "domains": len(self.domains)}

    # -- single values (the download's per-row checks)
    def match_url(self, url: Optional[str], what: str = "url") -> Optional[str]:
        """The reason ``url`` is blocked (its URL or a domain above its host), or None."""
        if not url or not (self.urls or self.domains):
            return None
        if self.urls and normalize_url(url) in self.urls:
            return f"{BLOCKLISTED} ({what})"
        domain = self.match_host(host_of(url))
        return f"{BLOCKLISTED} (domain {domain} of the {what})" if domain else None

    def match_host(self, host: str) -> Optional[str]:
        """The listed domain ``host`` is in or under, or None."""
        if not host or not self.domains:
            return None
        parts = host.lower().split(".")
        for i in range(len(parts)):
            candidate = ".".join(parts[i:])
            if candidate in self.domains:
                return candidate
        return None

    def match_bytes(self, data: bytes, what: str) -> Optional[str]:
        """The reason image bytes are blocked by their MD5 or SHA-256, or None (hashes only when the list has some)."""
        if self.md5 and hashlib.md5(data, usedforsecurity=False).hexdigest() in self.md5:
            return f"{BLOCKLISTED} (md5 of the {what})"
        if self.sha256 and hashlib.sha256(data).hexdigest() in self.sha256:
            return f"{BLOCKLISTED} (sha256 of the {what})"
        return None

    def match_hashes(self, md5: Optional[str] = None, sha256: Optional[str] = None, what: str = "image") -> Optional[str]:
        if md5 and md5.lower() in self.md5:
            return f"{BLOCKLISTED} (md5 of the {what})"
        if sha256 and sha256.lower() in self.sha256:
            return f"{BLOCKLISTED} (sha256 of the {what})"
        return None


def _classify(line: str):
    low = line.lower()
    prefix, colon, rest = low.partition(":")
    if colon and prefix in ("md5", "sha256", "domain") and not rest.startswith("//"):
        low = rest.strip()
        kind = prefix
    else:
        kind = None
    if kind in (None, "md5", "sha256") and _HEX.match(low) and len(low) in (32, 64):
        found = "md5" if len(low) == 32 else "sha256"
        return (found, low) if kind in (None, found) else (None, None)
    if kind is None and low.startswith(("http://", "https://")):
        return "url", normalize_url(line.strip())
    if kind in (None, "domain"):
        domain = low.lstrip("*").lstrip(".").rstrip(".")
        if _DOMAIN.match(domain) and (kind == "domain" or "." in domain):
            return "domain", domain
    return None, None


# ---------------------------------------------------------------------------------------- the Arrow step

def url_hosts_of(values: pa.Array) -> pa.Array:
    """:func:`host_of` of each URL, vectorised: read by a pattern, in Python only where the pattern finds no
    plain host (white space, control or non-ASCII characters, IPv6, percent-encoding ...)."""
    parts = pc.extract_regex(values, _HOST_RE)
    hosts = pc.utf8_rtrim(pc.utf8_lower(pc.struct_field(parts, [0])), ".")
    plain = pc.and_(pc.fill_null(pc.match_substring_regex(hosts, _PLAIN_HOST_RE), False),
                    pc.fill_null(pc.match_substring_regex(pc.struct_field(parts, [1]), r"^(:[0-9]*)?$"), False))
    odd = pc.and_(pc.invert(plain), pc.is_valid(values))
    if not pc.any(odd).as_py():
        return pc.if_else(pc.is_valid(values), hosts, pa.scalar(None, pa.string()))
    fixed = {u: host_of(u) for u in pc.unique(pc.filter(values, odd)).to_pylist()}
    keys = pa.array(list(fixed), pa.string())
    looked = pc.take(pa.array(list(fixed.values()), pa.string()), pc.index_in(values, value_set=keys))
    return pc.if_else(odd, looked, hosts)


def _matches(batch: Union[pa.RecordBatch, pa.Table], blocklist: Blocklist):
    """``(mask, code, reason)`` per rule that can match ``batch``, in the order rows are matched (hashes, URLs,
    domains). Vectorised: URLs are normalised in Python only for rows whose host a listed URL has."""
    names = set(batch.schema.names)

    def column(name: str):
        col = batch.column(name)
        return col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col

    for name in HASH_COLUMNS:
        if name not in names:
            continue
        values = pc.utf8_lower(pc.cast(column(name), pa.string()))
        for kind, entries in (("md5", blocklist.md5), ("sha256", blocklist.sha256)):
            if entries:
                what = "original image" if name.startswith("original_") else "image"
                yield (pc.is_in(values, value_set=pa.array(sorted(entries), pa.string())), REASON_CODES[kind],
                       f"{BLOCKLISTED} ({kind} of the {what})")
    if not (blocklist.urls or blocklist.domains):
        return
    url_hosts = {host_of(u) for u in blocklist.urls}
    for name in URL_COLUMNS:
        if name not in names:
            continue
        values = pc.cast(column(name), pa.string())
        hosts = url_hosts_of(values)
        if blocklist.urls:
            # a value in normal form (:data:`_NORMAL_URL_RE`) is compared as it is; only the others on a host
            # some listed URL has are normalised in Python
            normal = pc.fill_null(pc.match_substring_regex(values, _NORMAL_URL_RE), False)
            hit = pc.and_(normal, pc.is_in(values, value_set=pa.array(sorted(blocklist.urls), pa.string())))
            maybe = pc.and_(pc.fill_null(pc.is_in(hosts, value_set=pa.array(sorted(url_hosts), pa.string())), False),
                            pc.invert(normal))
            candidates = pc.unique(pc.filter(values, maybe))
            listed = [u for u in candidates.to_pylist() if u and normalize_url(u) in blocklist.urls]
            if listed:
                hit = pc.or_(hit, pc.is_in(values, value_set=pa.array(listed, pa.string())))
            yield hit, REASON_CODES["url"], f"{BLOCKLISTED} ({name})"
        if blocklist.domains:
            by_domain = {}
            for h in pc.unique(hosts).to_pylist():
                domain = blocklist.match_host(h) if h else None
                if domain:
                    by_domain.setdefault(domain, []).append(h)
            for domain, hs in sorted(by_domain.items()):
                yield (pc.is_in(hosts, value_set=pa.array(hs, pa.string())), REASON_CODES["domain"],
                       f"{BLOCKLISTED} (domain {domain} of the {name})")


def blocked(batch: Union[pa.RecordBatch, pa.Table], blocklist: Blocklist, *, codes: bool = False) -> pa.Array:
    """Per row of ``batch``, the reason it is blocked or null (a string array, same length).

    Reads the columns of :data:`HASH_COLUMNS` and :data:`URL_COLUMNS` that ``batch`` has; pure (no I/O), so
    the local and Spark engines apply it to their own batches. Rows match in this order: hashes, URLs,
    domains (the first reason is given). The reason says what matched (``blocklisted (domain x.com of the
    url)``); with ``codes`` it is one of :data:`REASON_CODES` (``blocklist_domain``), the decision reasons
    ``ccmb build-shards --blocklist`` counts."""
    reasons = pa.nulls(batch.num_rows, pa.string())
    for mask, code, reason in _matches(batch, blocklist):
        reasons = pc.coalesce(reasons, pc.if_else(pc.fill_null(mask, False), pa.scalar(code if codes else reason),
                                                  pa.scalar(None, pa.string())))
    return reasons


def drop_blocked(batch: Union[pa.RecordBatch, pa.Table], blocklist: Blocklist, *, codes: bool = False):
    """``(kept rows, counts by reason)``: :func:`blocked` applied as a filter."""
    reasons = blocked(batch, blocklist, codes=codes)
    keep = pc.is_null(reasons)
    counts = {r["values"]: int(r["counts"]) for r in pc.value_counts(pc.drop_null(reasons)).to_pylist()}
    return batch.filter(keep), counts


def merge_counts(total: dict, counts: Iterable) -> dict:
    """Add per-batch counts (from :func:`drop_blocked`) into ``total``."""
    for reason, n in dict(counts).items():
        total[reason] = total.get(reason, 0) + n
    return total
