"""URL normalisation for URL-level dedup, vectorised (pyarrow compute, RE2 regexes).

Two URLs are the same image address when their normal forms are equal. The normal form:

1. trim whitespace, drop the ``#fragment``;
2. drop the scheme (``http`` and ``https`` serve the same image on nearly every host);
3. lower-case the host and drop a default port (``:80``, ``:443``);
4. drop tracking query parameters (``utm_*``, ``spm``, ``fbclid``, ``gclid``), keep the others in order;
5. drop trailing slashes of the path.

Path and query keep their case (paths are case-sensitive on most servers). A value that is not
``scheme://...`` is kept trimmed, as is. Every engine runs this function (Spark in its Python tasks).
"""
from __future__ import annotations

import pyarrow as pa
import pyarrow.compute as pc

FRAGMENT = r"#.*$"
DEFAULT_PORT = r":(80|443)$"
# A run of tracking parameters, each ending at "&" or the end, after its separator (group 1, kept). The
# name must end there or at "=": "spmid=7" is not "spm" (RE2 has no look-ahead, so the "&" is consumed).
TRACKING_PARAM = r"([?&])(?:(?:utm_[A-Za-z0-9_]*|spm|fbclid|gclid)(?:=[^&]*)?(?:&|$))+"
MULTI_AMP = r"&&+"
QMARK_AMP = r"\?&"
TRAILING_SEP = r"[?&]$"
TRAILING_SLASH = r"/+$"
WS = " \t\n\r\f\v"


def normalize_urls(urls) -> pa.Array:
    """Normal forms of ``urls`` (nulls and empty strings give null)."""
    arr = urls if isinstance(urls, (pa.Array, pa.ChunkedArray)) else pa.array(urls, pa.string())
    if isinstance(arr, pa.ChunkedArray):
        arr = arr.combine_chunks()
    if len(arr) == 0:
        return pa.array([], pa.string())
    u = pc.utf8_trim(arr, characters=WS)
    u = pc.replace_substring_regex(u, FRAGMENT, "")
    parts = pc.extract_regex(u, r"^(?P<scheme>[A-Za-z][A-Za-z0-9+.\-]*)://(?P<host>[^/?#]*)"
                                r"(?P<path>[^?]*)(?P<query>.*)$")
    host = pc.replace_substring_regex(pc.utf8_lower(pc.struct_field(parts, "host")), DEFAULT_PORT, "")
    path = pc.replace_substring_regex(pc.struct_field(parts, "path"), TRAILING_SLASH, "")
    query = pc.struct_field(parts, "query")
    query = pc.replace_substring_regex(query, TRACKING_PARAM, r"\1")
    query = pc.replace_substring_regex(query, MULTI_AMP, "&")
    query = pc.replace_substring_regex(query, QMARK_AMP, "?")
    query = pc.replace_substring_regex(query, TRAILING_SEP, "")
    query = pc.replace_substring_regex(query, TRAILING_SEP, "")
    norm = pc.binary_join_element_wise("//", host, path, query, "")
    out = pc.if_else(pc.is_valid(parts), norm, u)
    if isinstance(out, pa.ChunkedArray):
        out = out.combine_chunks()
    return pc.if_else(pc.equal(pc.fill_null(out, ""), ""), pa.scalar(None, pa.string()), out)
