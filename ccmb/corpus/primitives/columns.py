"""What the curation steps read from a download row, each written once: whether the row was downloaded,
its primary text (``caption``, falling back to ``title``), its SHA-256 as 32 bytes."""
from __future__ import annotations

import binascii
import logging

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

logger = logging.getLogger(__name__)

#: The parquet ``status`` of a row that produced a sample.
STATUS_SUCCESS = "success"
#: Text fields of a download row, in the order a caption-less row falls back to them.
TEXT_COLUMNS = ("caption", "title", "content", "query")


def downloaded(table: pa.Table) -> pa.Array:
    """Per row: True when the download produced a sample (``status == "success"``; nulls are False)."""
    ok = pc.equal(pc.fill_null(table.column("status"), ""), STATUS_SUCCESS)
    return ok.combine_chunks() if isinstance(ok, pa.ChunkedArray) else ok


def text_columns(field: str = "caption") -> list:
    """The columns :func:`primary_text` reads for ``field``."""
    return [field, "title"] if field == "caption" else [field]


def primary_text(table: pa.Table, field: str = "caption"):
    """The text of ``field`` per row; ``caption`` (the download's primary text) falls back to ``title``."""
    text = table.column(field)
    if field == "caption" and "title" in table.column_names:
        text = pc.coalesce(text, table.column("title"))
    return text


def binary_matrix(column, dtype, width: int) -> np.ndarray:
    """Fixed-size values packed in a binary column (``width`` items of ``dtype`` each) as an (n, width)
    numpy view, zero-copy where the column allows (pHash variant triples, embedding vectors)."""
    arr = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    n = len(arr)
    if not n:
        return np.zeros((0, width), dtype)
    _, ob, db = arr.buffers()
    offsets = np.frombuffer(ob, np.int32, n + 1, arr.offset * 4)
    data = np.frombuffer(db, np.uint8, int(offsets[-1] - offsets[0]), int(offsets[0]))
    return data.view(dtype).reshape(n, width)


def packed_binary(values: np.ndarray) -> pa.Array:
    """Rows of a 2-D numpy array as a binary column (the inverse of :func:`binary_matrix`)."""
    values = np.ascontiguousarray(values)
    n, row = len(values), values.dtype.itemsize * (values.shape[1] if values.ndim > 1 else 1)
    offsets = np.arange(0, row * n + 1, row, dtype=np.int32)
    return pa.Array.from_buffers(pa.binary(), n, [None, pa.py_buffer(offsets), pa.py_buffer(values.tobytes())])


def sha256_to_binary(column, where: str = "") -> pa.Array:
    """Hex SHA-256 strings as 32-byte binaries (half the memory; hashing is faster). Values that are
    not 64 hex digits become null (logged): they take no part in exact dedup."""
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks()
    n = len(column)
    out_type = pa.binary(32)
    if n == 0:
        return pa.array([], out_type)
    lengths = pc.fill_null(pc.binary_length(column), 0).to_numpy(zero_copy_only=False)
    valid = column.is_valid().to_numpy(zero_copy_only=False) & (lengths == 64)
    _, offsets_buf, data_buf = column.buffers()
    offsets = np.frombuffer(offsets_buf, np.int32, n + 1, column.offset * 4)
    contiguous = bool(np.all(lengths[~valid] == 0)) if (~valid).any() else True
    if contiguous and data_buf is not None and valid.any():
        lo = int(offsets[0])
        hexes = np.frombuffer(data_buf, np.uint8, 64 * int(valid.sum()), lo).reshape(-1, 64)
    else:  # irregular values: gather row by row (rare)
        rows = [column[i].as_py().encode("ascii", "replace") if valid[i] else None for i in range(n)]
        hexes = np.frombuffer(b"".join(r for r in rows if r is not None), np.uint8).reshape(-1, 64)
    try:  # fast path: every value is valid hex (C speed)
        packed = np.frombuffer(binascii.unhexlify(hexes.tobytes()), np.uint8).reshape(-1, 32)
        good = np.ones(len(packed), bool)
    except (binascii.Error, ValueError):
        nib = _HEX_LUT[hexes]
        good = ~(nib == 255).any(axis=1)
        packed = (nib[:, 0::2] << 4) | nib[:, 1::2]
    rows_valid = np.flatnonzero(valid)
    bad = rows_valid[~good]
    if len(bad):
        logger.warning("%s: %d sha256 values are not 64 hex digits (ignored by exact dedup)", where, len(bad))
        valid[bad] = False
    if len(packed) == n and good.all():
        full = packed
    else:
        full = np.zeros((n, 32), np.uint8)
        full[rows_valid[good]] = packed[good]
    validity = None if valid.all() else pa.array(valid).buffers()[1]
    return pa.FixedSizeBinaryArray.from_buffers(out_type, n, [validity, pa.py_buffer(full)],
                                                null_count=int(n - valid.sum()))


_HEX_LUT = np.full(256, 255, np.uint8)
for _i, _c in enumerate(b"0123456789abcdef"):
    _HEX_LUT[_c] = _i
for _i, _c in enumerate(b"ABCDEF"):
    _HEX_LUT[_c] = 10 + _i
