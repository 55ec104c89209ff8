"""Verification of a shard set (``ccmb verify``, ``ccmb.shards.verify_shard_set``).

Against ``manifest.json``/``sizes.json``: every tar's checksum and sample count, every image decodes, member
names are safe; and, when the folder's shards come with parquets (a download folder or a built set), each
tar's ``NNNNN.parquet`` against the tar and the shard's ``_stats.json`` (:func:`parquet_problems`). Every
problem is reported, each naming the file. See ``docs/formats.md``.
"""
from __future__ import annotations

import tarfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Iterable, List, Mapping, Sequence

from .shards import (MANIFEST_FILE, METADATA_FIELDS, SHARD_NAME_RE, SIZES_FILE, STATUS_SUCCESS, PathLike,
                     ShardFormatError, expects_parquets, iter_tar_members, list_shards, parquet_footer_check,
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
    tar_path = Path(tar_path)
    path = tar_path.with_suffix(".parquet")
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
        problems.append(f"{path}: success rows without a sample in {tar_path.name}: {_examples(only_pq)}")
    if only_tar:
        problems.append(f"{path}: samples of {tar_path.name} without a success row: {_examples(only_tar)}")
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
    if stats is None:
        problems.append(f"{stats_path}: missing (an unfinished shard)")
        return problems
    if isinstance(stats.get("successes"), int) and stats["successes"] != len(success):
        problems.append(f"{path}: {len(success)} success rows, {stats_path.name} says {stats['successes']}")
    ours = stats.get("ccmb") if isinstance(stats.get("ccmb"), dict) else None
    if ours is not None and isinstance(stats.get("status_dict"), dict) and stats["status_dict"] != failures:
        problems.append(f"{path}: failure reasons {failures}, {stats_path.name} says {stats['status_dict']}")
    recorded = ours.get("parquet") if ours is not None else None
    if isinstance(recorded, dict) and recorded.get("sha256") and sha256_file(path) != recorded["sha256"]:
        problems.append(f"{path}: sha256 differs from {stats_path.name}")
    return problems


def verify_shard_set(shard_dir: PathLike, *, decode_images: bool = True,
                     progress: bool = False) -> VerifyReport:
    """Check a finished shard set (a download folder or a built set) against its manifest and sizes:
    checksums, counts, every image, member names, and each tar's parquet (:func:`parquet_problems`).

    Every problem is reported (not just the first), each naming the file.
    """
    from .images import ImageDecodeError, decode_image

    shard_dir = Path(shard_dir)
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
    on_disk = {p.name for p in list_shards(shard_dir)}
    for name in sorted(on_disk - set(entries)):
        report.problems.append(f"{shard_dir / name}: not listed in {MANIFEST_FILE}")
    for name in sorted(set(sizes) ^ set(entries)):
        report.problems.append(f"{shard_dir / SIZES_FILE}: {name} listed in only one of sizes.json/manifest.json")
    with_parquets = expects_parquets(shard_dir)
    if with_parquets:
        for p in sorted(shard_dir.glob("*.parquet")):
            if SHARD_NAME_RE.match(p.stem + ".tar") and f"{p.stem}.tar" not in entries:
                report.problems.append(f"{p}: its tar {p.stem}.tar is not in {MANIFEST_FILE}")

    names = sorted(entries)
    iterator: Iterable[str] = names
    if progress:
        from tqdm import tqdm

        iterator = tqdm(names, desc="verify", unit="shard")
    for name in iterator:
        entry = entries[name]
        path = shard_dir / name
        report.shards_checked += 1
        if not path.exists():
            report.problems.append(f"{path}: missing")
            continue
        if sha256_file(path) != entry.get("sha256"):
            report.problems.append(f"{path}: sha256 differs from {MANIFEST_FILE}")
        samples: Dict[str, Dict[str, Any]] = {}

        def check_member(member: tarfile.TarInfo, path: Path = path) -> None:
            reason = unsafe_member_reason(member)
            if reason is not None:
                report.problems.append(f"{path}: member {member.name!r}: {reason}")

        try:
            for key, parts in iter_tar_members(path, on_member=check_member):
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
        n = len(samples)
        report.samples += n
        if n != entry.get("samples"):
            report.problems.append(f"{path}: {n} samples, {MANIFEST_FILE} says {entry.get('samples')}")
        if name in sizes and sizes[name] != n:
            report.problems.append(f"{path}: {n} samples, {SIZES_FILE} says {sizes[name]}")
        if with_parquets:
            report.problems.extend(parquet_problems(path, samples))
    return report
