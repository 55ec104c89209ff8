"""Verification of a shard set (``ccmb verify``, ``ccmb.shards.verify_shard_set``).

Against ``manifest.json``/``sizes.json``: every tar's checksum and sample count, every image decodes, member
names are safe; and, when the folder's shards come with parquets (a download folder or a built set), each
tar's ``NNNNN.parquet`` against the tar and the shard's ``_stats.json`` (:func:`parquet_problems`). Every
problem is reported, each naming the file. The set may be local or at an fsspec URL (:mod:`ccmb.storage`).
See ``docs/formats.md``.
"""
from __future__ import annotations

import io
import tarfile
from dataclasses import dataclass, field
from typing import Any, Dict, Iterable, List, Mapping, Sequence

from . import storage
from .shards import (MANIFEST_FILE, METADATA_FIELDS, SHARD_NAME_RE, SIZES_FILE, STATUS_SUCCESS, HashingReader,
                     PathLike, ShardFormatError, expects_parquets, iter_tar_members, list_shards, parquet_footer_check,
                     read_manifest, read_parquet, read_shard_stats, read_sizes, sample_from_members, sha256_file,
                     stats_path_of, unsafe_member_reason)


@dataclass
class VerifyReport:
    shards_checked: int = 0
    samples: int = 0
    problems: List[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


#: Fields compared between a success row of the parquet and its sample's ``{key}.json``.
CROSS_CHECKED_FIELDS = tuple(METADATA_FIELDS) + ("caption",)


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, (int, float)) and isinstance(b, (int, float)) and not isinstance(a, bool):
        return a == b
    return str(a) == str(b)


def _examples(items: Sequence[Any], n: int = 5) -> str:
    return ", ".join(str(x) for x in items[:n]) + (f" ... ({len(items)} in all)" if len(items) > n else "")


def parquet_problems(tar_path: PathLike, samples: Mapping[str, Dict[str, Any]]) -> List[str]:
    """Problems of a shard's parquet, read whole, against its tar and its ``_stats.json``.

    ``samples`` maps the keys of the tar's samples to their ``{key}.json`` metadata. Checked: the parquet
    is there and reads (:func:`read_parquet`), keys are unique, its success rows are exactly the tar's
    samples and agree with their ``{key}.json`` on :data:`CROSS_CHECKED_FIELDS`; ``_stats.json`` exists
    and its counts (rows, successes, failure reasons) and recorded parquet checksum match.
    """
    tar_path = storage.location(tar_path)
    tar_name = storage.name(tar_path)
    path = storage.sibling(tar_path, f"{storage.stem(tar_path)}.parquet")
    rows_in_footer, problems = parquet_footer_check(path)
    if rows_in_footer is None:
        return problems
    try:
        table = read_parquet(path, check=False)
    except ShardFormatError as exc:
        return problems + [str(exc)]
    try:
        stats = read_shard_stats(tar_path)
    except ShardFormatError:
        stats = {}  # already reported by parquet_footer_check
    rows = table.to_pylist()
    seen: set = set()
    dups, null_keys, failures = [], 0, {}
    success: Dict[str, Dict[str, Any]] = {}
    for row in rows:
        key = row.get("key")
        if key is None:
            null_keys += 1
        elif key in seen:
            dups.append(key)
        seen.add(key)
        if row.get("status") == STATUS_SUCCESS:
            if key is not None:
                success[key] = row
        else:
            reason = str(row.get("error_message") or row.get("status"))
            failures[reason] = failures.get(reason, 0) + 1
    if dups:
        problems.append(f"{path}: duplicate keys {_examples(sorted(set(dups)))}")
    if null_keys:
        problems.append(f"{path}: {null_keys} rows without a key")
    only_pq = sorted(set(success) - set(samples))
    only_tar = sorted(set(samples) - set(success))
    if only_pq:
        problems.append(f"{path}: success rows without a sample in {tar_name}: {_examples(only_pq)}")
    if only_tar:
        problems.append(f"{path}: samples of {tar_name} without a success row: {_examples(only_tar)}")
    differ = []
    for key in sorted(set(success) & set(samples)):
        meta, row = samples[key], success[key]
        for f in CROSS_CHECKED_FIELDS:
            a, b = row.get(f), meta.get(f)
            if a is not None and b is not None and not _same(a, b):
                differ.append(f"{key}.{f}")
    if differ:
        problems.append(f"{path}: values differ from the samples' .json members: {_examples(differ)}")
    stats_path = stats_path_of(tar_path)
    stats_name = storage.name(stats_path)
    if stats is None:
        problems.append(f"{stats_path}: missing (an unfinished shard)")
        return problems
    if isinstance(stats.get("successes"), int) and stats["successes"] != len(success):
        problems.append(f"{path}: {len(success)} success rows, {stats_name} says {stats['successes']}")
    ours = stats.get("ccmb") if isinstance(stats.get("ccmb"), dict) else None
    if ours is not None and isinstance(stats.get("status_dict"), dict) and stats["status_dict"] != failures:
        problems.append(f"{path}: failure reasons {failures}, {stats_name} says {stats['status_dict']}")
    recorded = ours.get("parquet") if ours is not None else None
    if isinstance(recorded, dict) and recorded.get("sha256") and sha256_file(path) != recorded["sha256"]:
        problems.append(f"{path}: sha256 differs from {stats_name}")
    return problems


def verify_shard_set(shard_dir: PathLike, *, decode_images: bool = True,
                     progress: bool = False) -> VerifyReport:
    """Check a finished shard set (a download folder or a built set) against its manifest and sizes:
    checksums, counts, every image, member names, and each tar's parquet (:func:`parquet_problems`).

    Every problem is reported (not just the first), each naming the file.
    """
    from .images import ImageDecodeError, decode_image

    shard_dir = storage.location(shard_dir)
    report = VerifyReport()
    try:
        manifest = read_manifest(shard_dir)
    except ShardFormatError as exc:
        report.problems.append(str(exc))
        return report
    try:
        sizes = read_sizes(shard_dir)
    except ShardFormatError as exc:
        report.problems.append(str(exc))
        sizes = {}
    entries: Dict[str, Dict[str, Any]] = manifest.get("shards", {})
    present = set(storage.listdir(shard_dir))  # one listing: which files exist
    on_disk = {storage.name(p) for p in list_shards(shard_dir)}
    for name in sorted(on_disk - set(entries)):
        report.problems.append(f"{storage.join(shard_dir, name)}: not listed in {MANIFEST_FILE}")
    for name in sorted(set(sizes) ^ set(entries)):
        report.problems.append(f"{storage.join(shard_dir, SIZES_FILE)}: {name} listed in only one of "
                               f"sizes.json/manifest.json")
    with_parquets = expects_parquets(shard_dir)
    if with_parquets:
        for n in sorted(present):
            stem = n[: -len(".parquet")]
            if n.endswith(".parquet") and SHARD_NAME_RE.match(stem + ".tar") and f"{stem}.tar" not in entries:
                report.problems.append(f"{storage.join(shard_dir, n)}: its tar {stem}.tar is not in {MANIFEST_FILE}")

    names = sorted(entries)
    iterator: Iterable[str] = names
    if progress:
        from tqdm import tqdm

        iterator = tqdm(names, desc="verify", unit="shard")
    for name in iterator:
        entry = entries[name]
        path = storage.join(shard_dir, name)
        report.shards_checked += 1
        if name not in present:
            report.problems.append(f"{path}: missing")
            continue
        samples: Dict[str, Dict[str, Any]] = {}
        sha_at = len(report.problems)  # the checksum problem is listed first, as before the tar's own

        def check_member(member: tarfile.TarInfo, path: storage.Location = path) -> None:
            reason = unsafe_member_reason(member)
            if reason is not None:
                report.problems.append(f"{path}: member {member.name!r}: {reason}")

        try:
            raw = storage.open_read(path, block_size=storage.STREAM_BLOCK)
        except OSError as exc:
            report.problems.append(f"{path}: unreadable: {exc}")
            continue
        reader = HashingReader(raw)  # one read of the tar: its members and its checksum
        try:
            for key, parts in iter_tar_members(path, on_member=check_member,
                                               fileobj=io.BufferedReader(reader, 1 << 20)):
                if key in samples:
                    report.problems.append(f"{path}: duplicate key {key}")
                try:
                    s = sample_from_members(key, parts, source=str(path))
                except ShardFormatError as exc:
                    report.problems.append(str(exc))
                    continue
                samples[key] = s.meta
                if decode_images:
                    try:
                        decode_image(s.image, mode=None, source=f"{path}:{s.key}.{s.image_ext}")
                    except ImageDecodeError as exc:
                        report.problems.append(str(exc))
        except ShardFormatError as exc:
            report.problems.append(str(exc))
        try:
            reader.drain()
        finally:
            raw.close()
        if reader.hash.hexdigest() != entry.get("sha256"):
            report.problems.insert(sha_at, f"{path}: sha256 differs from {MANIFEST_FILE}")
        n = len(samples)
        report.samples += n
        if n != entry.get("samples"):
            report.problems.append(f"{path}: {n} samples, {MANIFEST_FILE} says {entry.get('samples')}")
        if name in sizes and sizes[name] != n:
            report.problems.append(f"{path}: {n} samples, {SIZES_FILE} says {sizes[name]}")
        if with_parquets:
            report.problems.extend(parquet_problems(path, samples))
    return report
