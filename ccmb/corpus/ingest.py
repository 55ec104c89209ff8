"""Read URL lists (Zero JSON records, CSV, parquet ...) and normalise them into img2dataset input.

Every input row becomes one row of the normalised input, in input order, so keys are stable across
runs. Rows that must not be downloaded (malformed JSON, non-UTF-8 text, missing URL, non-http(s)
scheme, duplicate image key) stay in as well: their URL is emptied and the reason is carried in the
internal column ``ccmb_input_error``; ``ccmb.corpus.download`` turns them into ``failed_input`` rows
of the shard parquet. Nothing is dropped silently.

Inputs: files, folders (their supported files, sorted), globs; JSON arrays, JSON lines, CSV, TSV
(each optionally ``.gz``) and parquet. Keys/column names match case-insensitively.
"""
from __future__ import annotations

import contextlib
import csv
import glob
import gzip
import hashlib
import io
import itertools
import json
import logging
import os
import tempfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from .. import atomic
from ..safejson import loads_bounded, nesting_depth
from ..types import PathLike
from .primitives.spill import DEFAULT_MEMORY_GB, RepeatFinder, SpillDir, plan

logger = logging.getLogger(__name__)


#: Zero's released keys (lower-cased) -> the foundation's metadata names (ccmb.shards.METADATA_FIELDS).
ZERO_FIELDS: Dict[str, str] = {
    "imageurl": "url",
    "title": "title",
    "content": "content",
    "imagequery": "query",
    "keywords": "keywords",
    "imagekey": "image_key",
    "url": "page_url",
}
ZERO_CAPTION_FIELDS = ("title", "content", "query", "keywords")
#: Metadata columns every normalised input carries (besides ``url`` and ``caption``).
META_COLUMNS = ["title", "content", "query", "keywords", "image_key", "page_url", "source"]
#: Internal columns: reason a row was refused before download, and its original URL.
ERROR_COLUMN = "ccmb_input_error"
INPUT_URL_COLUMN = "ccmb_input_url"
INTERNAL_COLUMNS = [ERROR_COLUMN, INPUT_URL_COLUMN]
#: Column names img2dataset reserves for itself; input columns with these names get an ``input_`` prefix.
RESERVED = {"key", "caption", "url", "width", "height", "original_width", "original_height", "status",
            "error_message", "exif", "md5", "sha256", "sha512"}

#: Longest JSON line read (longer lines are refused as "malformed JSON: line longer than N bytes").
MAX_LINE_BYTES = 1_000_000
#: Deepest JSON nesting accepted (Zero records are 1 level deep).
MAX_JSON_DEPTH = 64

FORMATS = {".json": "json", ".jsonl": "json", ".ndjson": "json", ".csv": "csv", ".tsv": "tsv",
           ".parquet": "parquet"}


class InputError(ValueError):
    """An input cannot be read at all (or, with ``strict``, a bad row); the message names file and line."""


@dataclass
class Record:
    """One raw input row: where it came from, its fields (or None) and why it is bad (or None)."""

    source: str
    where: str
    fields: Optional[Dict[str, Any]]
    error: Optional[str] = None


@dataclass
class IngestResult:
    """What :func:`normalize_inputs` wrote."""

    parts: List[Path]
    rows: int
    refused: Dict[str, int] = field(default_factory=dict)
    refused_examples: List[str] = field(default_factory=list)  # the first few "file:line: reason"
    columns: List[str] = field(default_factory=list)  # additional columns for img2dataset


# ----------------------------------------------------------------------------------------- files

def _format_of(path: Path) -> Optional[str]:
    name = path.name.lower()
    if name.endswith(".gz"):
        name = name[:-3]
    return FORMATS.get(os.path.splitext(name)[1])


def resolve_inputs(inputs: Sequence[PathLike]) -> List[Path]:
    """Expand files, folders (supported files inside, sorted) and globs, in the order given."""
    out: List[Path] = []
    for item in inputs:
        text = str(item)
        if any(c in text for c in "*?["):
            matches = sorted(Path(p) for p in glob.glob(text, recursive=True) if Path(p).is_file())
            if not matches:
                raise InputError(f"{text}: the pattern matches no file")
            out.extend(m for m in matches if _format_of(m))
            continue
        p = Path(text)
        if p.is_dir():
            found = sorted(q for q in p.iterdir() if q.is_file() and _format_of(q))
            if not found:
                raise InputError(f"{p}: no .json/.jsonl/.csv/.tsv/.parquet(.gz) file in this folder")
            out.extend(found)
        elif p.is_file():
            out.append(p)
        else:
            raise InputError(f"{p}: no such file or folder")
    if not out:
        raise InputError("no input files")
    return out


def _open_binary(path: Path):
    return gzip.open(path, "rb") if path.name.lower().endswith(".gz") else open(path, "rb")


def _sniff_json(path: Path) -> bool:
    with _open_binary(path) as fh:
        head = fh.read(64).lstrip(b"\xef\xbb\xbf \t\r\n")
    return head[:1] in (b"{", b"[")


def _has_surrogates(s: str) -> bool:
    try:
        s.encode("utf-8")
        return False
    except UnicodeEncodeError:
        return True


def _iter_json(path: Path) -> Iterator[Record]:
    src = str(path)
    with _open_binary(path) as fh:
        first = b""
        while True:
            ch = fh.read(1)
            if not ch or ch not in b"\xef\xbb\xbf \t\r\n":
                first = ch
                break
    if first == b"[":
        with _open_binary(path) as fh:
            raw = fh.read()
        try:
            text = raw.decode("utf-8-sig")
            bad_utf8 = False
        except UnicodeDecodeError:
            text, bad_utf8 = raw.decode("utf-8", errors="replace"), True
        if nesting_depth(text) > MAX_JSON_DEPTH + 1:  # the array, then records
            yield Record(src, f"{src}:1", None, f"malformed JSON array: nested deeper than {MAX_JSON_DEPTH} levels")
            return
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            yield Record(src, f"{src}:{exc.lineno}", None, f"malformed JSON array: {exc.msg}")
            return
        except RecursionError:
            yield Record(src, f"{src}:1", None, "malformed JSON array: nested too deeply")
            return
        for i, obj in enumerate(data):
            where = f"{src}:[{i}]"
            if not isinstance(obj, dict):
                yield Record(src, where, None, f"malformed record: expected a JSON object, got {type(obj).__name__}")
            else:
                yield Record(src, where, obj, "non-UTF-8 text in file" if bad_utf8 else None)
        return
    with _open_binary(path) as fh:
        for lineno, line in enumerate(_bounded_lines(fh, MAX_LINE_BYTES), 1):
            where = f"{src}:{lineno}"
            if line is None:
                yield Record(src, where, None, f"malformed JSON: line longer than {MAX_LINE_BYTES} bytes")
                continue
            if lineno == 1 and line.startswith(b"\xef\xbb\xbf"):
                line = line[3:]
            if not line.strip():
                continue
            error = None
            try:
                text = line.decode("utf-8")
            except UnicodeDecodeError:
                text, error = line.decode("utf-8", errors="replace"), "non-UTF-8 text"
            try:
                obj = loads_bounded(text, max_depth=MAX_JSON_DEPTH, max_bytes=MAX_LINE_BYTES)
            except json.JSONDecodeError as exc:
                yield Record(src, where, None, f"malformed JSON: {exc.msg} (column {exc.colno})")
                continue
            except ValueError as exc:  # too deep / too long
                yield Record(src, where, None, f"malformed JSON: {exc}")
                continue
            if not isinstance(obj, dict):
                yield Record(src, where, None, f"malformed record: expected a JSON object, got {type(obj).__name__}")
                continue
            yield Record(src, where, obj, error)


def _bounded_lines(fh, max_bytes: int) -> Iterator[Optional[bytes]]:
    """Lines of a binary file; a line longer than ``max_bytes`` is skipped unread and yields None."""
    while True:
        line = fh.readline(max_bytes + 1)
        if not line:
            return
        if len(line) > max_bytes and not line.endswith(b"\n"):
            while True:  # skip the rest of the over-long line in bounded chunks
                rest = fh.readline(1 << 20)
                if not rest or rest.endswith(b"\n"):
                    break
            yield None
            continue
        yield line


def _iter_csv(path: Path, delimiter: str) -> Iterator[Record]:
    src = str(path)
    csv.field_size_limit(1 << 24)
    with _open_binary(path) as fh:
        text = io.TextIOWrapper(fh, encoding="utf-8-sig", errors="surrogateescape", newline="")
        reader = csv.reader(text, delimiter=delimiter)
        try:
            header = next(reader)
        except StopIteration:
            return
        header = [h.strip() for h in header]
        while True:
            try:
                values = next(reader)
            except StopIteration:
                break
            except csv.Error as exc:
                yield Record(src, f"{src}:{reader.line_num}", None, f"malformed CSV: {exc}")
                continue
            where = f"{src}:{reader.line_num}"
            if not values:
                continue
            error = None
            if len(values) != len(header):
                error = f"malformed CSV: {len(values)} fields, header has {len(header)}"
            if any(_has_surrogates(v) for v in values):
                error = error or "non-UTF-8 text"
                values = [v.encode("utf-8", "surrogateescape").decode("utf-8", "replace") for v in values]
            yield Record(src, where, dict(zip(header, values)), error)


def _iter_parquet(path: Path) -> Iterator[Record]:
    src = str(path)
    try:
        pf = pq.ParquetFile(path)
    except Exception as exc:  # pyarrow raises several types for broken files
        raise InputError(f"{path}: not a readable parquet file: {exc}") from exc
    row = 0
    for batch in pf.iter_batches(batch_size=65536):
        for obj in batch.to_pylist():
            yield Record(src, f"{src}:row {row}", obj)
            row += 1


def iter_records(path: Path) -> Iterator[Record]:
    """Rows of one input file, each with its location (``file:line``)."""
    fmt = _format_of(path)
    if fmt is None:
        if not _sniff_json(path):
            raise InputError(f"{path}: unknown input format (use .json/.jsonl/.csv/.tsv/.parquet, optionally .gz)")
        fmt = "json"
    if fmt == "json":
        return _iter_json(path)
    if fmt in ("csv", "tsv"):
        return _iter_csv(path, "," if fmt == "csv" else "\t")
    return _iter_parquet(path)


def _header_keys(path: Path) -> List[str]:
    """Column names of a file (the first record's keys for JSON)."""
    fmt = _format_of(path)
    if fmt == "parquet":
        return list(pq.ParquetFile(path).schema_arrow.names)
    for rec in iter_records(path):
        if rec.fields is not None:
            return list(rec.fields)
    return []


# ----------------------------------------------------------------------------------------- rows

def _text(value: Any) -> Tuple[Optional[str], bool]:
    """A field as text; second item: it held text that is not valid UTF-8."""
    if value is None:
        return None, False
    if isinstance(value, bytes):
        try:
            return value.decode("utf-8"), False
        except UnicodeDecodeError:
            return value.decode("utf-8", errors="replace"), True
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        value = ",".join(value)
    if not isinstance(value, str):
        value = json.dumps(value, ensure_ascii=False, default=str)
    if _has_surrogates(value):
        return value.encode("utf-8", "surrogatepass").decode("utf-8", "replace"), True
    return value, False


def check_url(url: Optional[str], allow_file_urls: bool = False) -> Optional[str]:
    """None when ``url`` may be downloaded, else the reason it is refused."""
    if url is None or not url.strip():
        return "missing URL"
    url = url.strip()
    head = url[:8].lower()
    if head.startswith("http://") or head.startswith("https://"):
        return None
    scheme = url.partition(":")[0].lower() if ":" in url else ""
    if scheme == "file" and allow_file_urls:
        return None
    valid_scheme = scheme.replace("+", "").replace("-", "").replace(".", "").isalnum()
    if scheme in ("http", "https") or not valid_scheme:
        return "invalid URL: not of the form http(s)://host/path"
    hint = "; --allow-file-urls allows file://" if scheme == "file" else ""
    return f"unsupported URL scheme {scheme!r} (only http/https{hint})"


@dataclass
class Layout:
    """How raw fields map to normalised columns."""

    mode: str  # "zero" or "urls"
    caption_field: str = "title"  # zero: which text is the primary caption
    url_col: str = "url"  # urls: column names (case-insensitive)
    caption_col: Optional[str] = "caption"
    id_col: Optional[str] = None
    allow_file_urls: bool = False
    extra: List[str] = field(default_factory=list)  # urls: further input columns kept (original names)

    def extra_name(self, name: str) -> str:
        """Column name of a kept input column: metadata names as such, reserved ones prefixed ``input_``."""
        low = name.lower()
        if low in ("title", "content", "query", "keywords", "page_url") or (low == "image_key" and not self.id_col):
            return low
        return f"input_{low}" if low in RESERVED or low in META_COLUMNS or low in INTERNAL_COLUMNS else low

    @property
    def columns(self) -> List[str]:
        """Additional columns (img2dataset ``save_additional_columns``)."""
        extra = [self.extra_name(e) for e in self.extra]
        return META_COLUMNS + [e for e in extra if e not in META_COLUMNS] + INTERNAL_COLUMNS


def normalize_record(rec: Record, layout: Layout) -> Tuple[Dict[str, Optional[str]], Optional[str], Optional[str]]:
    """(row, error, dedup key) for one raw record; row has ``url``, ``caption`` and ``layout.columns``."""
    row: Dict[str, Optional[str]] = {c: None for c in ["url", "caption"] + layout.columns}
    row["source"] = rec.source
    error = rec.error
    if rec.fields is None:
        return row, error, None
    low: Dict[str, Any] = {}
    for k, v in rec.fields.items():
        low.setdefault(str(k).strip().lower(), v)
    bad_text = False
    if layout.mode == "zero":
        for key, name in ZERO_FIELDS.items():
            row[name], bad = _text(low.get(key))
            bad_text |= bad
        row["caption"] = row.get(layout.caption_field)
        url_name, dedup = "ImageUrl", row["image_key"]
    else:
        row["url"], bad = _text(low.get(layout.url_col.lower()))
        bad_text |= bad
        if layout.caption_col:
            row["caption"], bad = _text(low.get(layout.caption_col.lower()))
            bad_text |= bad
        if layout.id_col:
            row["image_key"], bad = _text(low.get(layout.id_col.lower()))
            bad_text |= bad
        for name in layout.extra:
            value, bad = _text(low.get(name.lower()))
            bad_text |= bad
            row[layout.extra_name(name)] = value
        url_name, dedup = layout.url_col, row["image_key"] if layout.id_col else None
    if row["url"] is not None:
        row["url"] = row["url"].strip()
    if error is None and bad_text:
        error = "non-UTF-8 text"
    if error is None:
        reason = check_url(row["url"], layout.allow_file_urls)
        if reason == "missing URL":
            error = f"missing {url_name}"
        elif reason is not None:
            error = reason
    return row, error, dedup


def _refuse(row: Dict[str, Optional[str]], error: str, where: str) -> None:
    row[INPUT_URL_COLUMN] = row["url"]
    row["url"] = ""  # img2dataset fails this row at once, without any network access
    row[ERROR_COLUMN] = f"{error} ({where})"


#: Rows of each input file looked at by :func:`check_inputs`.
SNIFF_ROWS = 100


def check_inputs(files: Sequence[Path], layout: "Layout", rows: int = SNIFF_ROWS) -> None:
    """Refuse, before anything is downloaded, an input file whose first ``rows`` records all lack the URL field
    (a file of another kind: a dataset's annotations, a results table ...), naming the fields it has:
    ``f.jsonl: not Zero metadata: no ImageUrl; fields found: text, image_path``. Files whose first rows are all
    unreadable are left to the per-row accounting."""
    want = "imageurl" if layout.mode == "zero" else layout.url_col.strip().lower()
    for path in files:
        seen: Dict[str, None] = {}
        parsed = 0
        for rec in itertools.islice(iter_records(path), rows):
            if rec.fields is None:
                continue
            parsed += 1
            keys = [str(k).strip() for k in rec.fields]
            if any(k.lower() == want for k in keys):
                break
            for k in keys:
                seen.setdefault(k, None)
        else:
            if parsed:
                found = ", ".join(list(seen)[:12]) + (" ..." if len(seen) > 12 else "")
                what = ("not Zero metadata: no ImageUrl" if layout.mode == "zero"
                        else f"not a URL list: no column {layout.url_col!r}")
                raise InputError(f"{path}: {what}; fields found: {found or '(none)'} (first {parsed} rows)")


def fingerprint_inputs(files: Sequence[Path], options: Dict[str, Any]) -> str:
    """A digest of the input files (path, size, mtime) and the options that decide the row order."""
    h = hashlib.sha256()
    for p in files:
        st = p.stat()
        h.update(f"{p.resolve()}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    h.update(json.dumps(options, sort_keys=True, default=str).encode())
    return h.hexdigest()


def normalize_inputs(files: Sequence[Path], out_dir: PathLike, layout: Layout, *, samples_per_shard: int,
                     limit: Optional[int] = None, strict: bool = False,
                     part_rows: Optional[int] = None, refused_path: Optional[PathLike] = None,
                     refused_examples: int = 5) -> IngestResult:
    """Write ``files`` as parquet parts ``part-NNNNN.parquet`` (all columns strings) under ``out_dir``.

    Parts hold a multiple of ``samples_per_shard`` rows, so img2dataset numbers shards as for one file.
    ``strict`` makes malformed records and non-UTF-8 text fatal (:class:`InputError` naming file:line).
    Refused rows are also listed in ``refused_path`` (``file:line<TAB>reason`` per line, when given); the
    first ``refused_examples`` of them are returned as ``"file:line: reason"``.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    for old in out_dir.glob("part-*.parquet"):
        old.unlink()
    if layout.mode == "urls" and not layout.extra:
        known = {layout.url_col.lower(), (layout.caption_col or "").lower(), (layout.id_col or "").lower()}
        seen: Dict[str, str] = {}
        for f in files:
            for k in _header_keys(f):
                if k.strip().lower() not in known:
                    seen.setdefault(k.strip().lower(), k.strip())
        layout.extra = list(seen.values())
    columns = ["url", "caption"] + layout.columns
    schema = pa.schema([pa.field(c, pa.string()) for c in columns])
    if part_rows is None:
        part_rows = samples_per_shard * max(1, 1_000_000 // samples_per_shard)
    elif part_rows % samples_per_shard:
        raise ValueError("part_rows must be a multiple of samples_per_shard")
    buffer: Dict[str, List[Optional[str]]] = {c: [] for c in columns}
    parts: List[Path] = []
    refused: Counter = Counter()

    def flush() -> None:
        if not buffer["url"]:
            return
        path = out_dir / f"part-{len(parts):05d}.parquet"
        table = pa.Table.from_pydict(buffer, schema=schema)
        with atomic.atomic_open(path, "wb") as fh:
            pq.write_table(table, fh)
        parts.append(path)
        for c in columns:
            buffer[c] = []

    def records() -> Iterator[Record]:
        for f in files:
            yield from iter_records(f)

    examples: List[Tuple[int, str]] = []
    log = atomic.atomic_open(refused_path, "w", encoding="utf-8") if refused_path else contextlib.nullcontext()
    total_bytes = sum(f.stat().st_size for f in files if f.is_file())
    with log as log_fh, SpillDir(out_dir / "keys", ".ccmb-ingest-") as spills, \
            tempfile.TemporaryFile("w+", encoding="utf-8", dir=spills.path) as early_log:
        keys = _KeyCheck(spills, plan(DEFAULT_MEMORY_GB, total_bytes // 64 + 1).buckets)
        rows = _normalize_rows(records(), layout, columns, buffer, flush, refused, examples, early_log, keys,
                               limit=limit, strict=strict, part_rows=part_rows, refused_examples=refused_examples)
        flush()
        dup_rows, dup_lines = keys.refuse_repeats(parts, part_rows, refused)
        _merge_refusals(early_log, dup_rows, dup_lines, examples, refused_examples, log_fh)
    examples_out = [e for _, e in sorted(examples)[:refused_examples]]
    if rows == 0:
        raise InputError(f"no rows in the input ({', '.join(map(str, files))})")
    if refused:
        logger.warning("%d of %d input rows refused before download: %s", sum(refused.values()), rows,
                       dict(refused.most_common(10)))
    return IngestResult(parts=parts, rows=rows, refused=dict(refused), refused_examples=examples_out,
                        columns=layout.columns)


def _normalize_rows(records: Iterator[Record], layout: Layout, columns: List[str], buffer: Dict[str, list],
                    flush: Any, refused: Counter, examples: List[Tuple[int, str]], log_fh: Any, keys: "_KeyCheck", *,
                    limit: Optional[int], strict: bool, part_rows: int, refused_examples: int) -> int:
    """Normalise and buffer every record; refused rows go to ``log_fh`` as ``row<TAB>where<TAB>reason``.
    Image keys of accepted rows go to ``keys`` (duplicates are refused after the pass, externally)."""
    rows = 0
    label = "ImageKey" if layout.mode == "zero" else layout.id_col
    for rec in records:
        if limit is not None and rows >= limit:
            break
        row, error, dedup = normalize_record(rec, layout)
        if error is not None and strict and (rec.fields is None or error == "non-UTF-8 text"):
            raise InputError(f"{rec.where}: {error}")
        if error is None and dedup is not None:
            keys.add(dedup, rows, rec.where, f"duplicate {label} {dedup!r}")
        if error is not None:
            _refuse(row, error, rec.where)
            refused[reason_class(error)] += 1
            if len(examples) < refused_examples:
                examples.append((rows, f"{rec.where}: {error}"))
            log_fh.write(f"{rows}\t{rec.where}\t{_one_line(error)}\n")
        for c in columns:
            buffer[c].append(row.get(c))
        rows += 1
        if len(buffer["url"]) >= part_rows:
            flush()
    return rows


class _KeyCheck:
    """The duplicate image-key check, external: (128-bit digest, row, where, message) spilled in buckets by
    digest (:class:`ccmb.corpus.spill.RepeatFinder`), so memory does not grow with the input; after the
    pass every later row of a repeated key is refused in its part (rewritten atomically)."""

    FLUSH = 1 << 16

    def __init__(self, spills: SpillDir, buckets: int) -> None:
        self.finder = RepeatFinder(spills, buckets)
        self.digests: List[bytes] = []
        self.rows: List[int] = []
        self.info: List[str] = []

    def add(self, key: str, row: int, where: str, error: str) -> None:
        self.digests.append(hashlib.blake2b(key.encode("utf-8"), digest_size=16).digest())
        self.rows.append(row)
        self.info.append(f"{where}\t{error}")
        if len(self.rows) >= self.FLUSH:
            self.flush()

    def flush(self) -> None:
        if not self.rows:
            return
        d = np.frombuffer(b"".join(self.digests), np.uint64).reshape(-1, 2)
        self.finder.add(d[:, 0].copy(), d[:, 1].copy(), np.asarray(self.rows, np.int64), self.info)
        self.digests, self.rows, self.info = [], [], []

    def refuse_repeats(self, parts: List[Path], part_rows: int, refused: Counter) -> Tuple[np.ndarray, List[str]]:
        """Refuse the repeated keys' later rows in the written parts; (their rows, ``where<TAB>reason``)."""
        self.flush()
        rows, infos = self.finder.repeats()
        lines = []
        for p in np.unique(rows // part_rows).tolist():
            sel = (rows // part_rows) == p
            local = rows[sel] - p * part_rows
            where_err = [infos[i].split("\t", 1) for i in np.flatnonzero(sel).tolist()]
            errors = [f"{err} ({where})" for where, err in where_err]
            table = pq.read_table(parts[p])
            n = table.num_rows
            mask = np.zeros(n, bool)
            mask[local] = True
            url = table.column("url").combine_chunks()
            mask_arr = pa.array(mask)
            table = table.set_column(table.column_names.index(INPUT_URL_COLUMN), INPUT_URL_COLUMN,
                                     pc.replace_with_mask(table.column(INPUT_URL_COLUMN).combine_chunks(), mask_arr,
                                                          url.filter(mask_arr)))
            table = table.set_column(table.column_names.index("url"), "url",
                                     pc.replace_with_mask(url, mask_arr, pa.array([""] * len(local), pa.string())))
            table = table.set_column(table.column_names.index(ERROR_COLUMN), ERROR_COLUMN,
                                     pc.replace_with_mask(table.column(ERROR_COLUMN).combine_chunks(), mask_arr,
                                                          pa.array(errors, pa.string())))
            with atomic.atomic_open(parts[p], "wb") as fh:
                pq.write_table(table, fh)
            for (where, err) in where_err:
                refused[reason_class(err)] += 1
                lines.append(f"{where}\t{_one_line(err)}")
        return rows, lines


def _merge_refusals(early_log: Any, dup_rows: np.ndarray, dup_lines: List[str], examples: List[Tuple[int, str]],
                    refused_examples: int, log_fh: Any) -> None:
    """Refused rows of the pass and the repeated keys, in input order: into ``examples`` (the first few)
    and the refused log (``where<TAB>reason`` per line)."""
    for r, line in zip(dup_rows[:refused_examples].tolist(), dup_lines[:refused_examples]):
        where, err = line.split("\t", 1)
        examples.append((r, f"{where}: {err}"))
    if log_fh is None:
        return
    early_log.seek(0)
    i = 0
    for line in early_log:
        row_text, rest = line.split("\t", 1)
        row = int(row_text)
        while i < len(dup_lines) and dup_rows[i] < row:
            log_fh.write(dup_lines[i] + "\n")
            i += 1
        log_fh.write(rest)
    for line in dup_lines[i:]:
        log_fh.write(line + "\n")


def _one_line(text: str) -> str:
    return text.replace("\t", " ").replace("\r", " ").replace("\n", " ")


def reason_class(error: Optional[str]) -> str:
    """A failure reason without its row-specific parts (location, quoted values), for counting."""
    text = (error or "unknown").strip()
    text = text.split(" (")[0].split(": ")[0]
    if text.startswith("duplicate "):
        text = text.split(" '")[0]
    return text[:160]
