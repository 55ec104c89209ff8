"""Where each downstream set comes from (``sources.json``) and fetching it into a data root.

Public sets (MUGE, Flickr30k-CN, ELEVATER CIFAR-100 as preprocessed by Chinese-CLIP) are fetched by name: the
archive is downloaded into ``$CCMB_HOME/downloads/datasets/<name>/`` (kept, so an offline machine can unpack it
again), verified, and unpacked into the data root (default ``$CCMB_HOME/datasets``), where the registry's layout
finds it. Sets behind a login, a form or a request come with manual steps: URL, files to expect, where to put
them and the command that checks the layout (``ccmb datasets verify``).
"""
from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

from ccmb.fetch import Artifact, FetchResult, datasets_dir, downloads_dir, fetch_artifact
from ccmb.fetch.core import file_spec_from_dict
from ccmb.suggest import unknown

SOURCES_FILE = Path(__file__).with_name("sources.json")
ELEVATER_PATTERN = "elevater-cn/<name>"


class NoSourceError(ValueError):
    """A dataset name without an entry in ``sources.json`` (the message lists the known ones)."""


@functools.lru_cache(maxsize=None)
def _entries() -> Dict[str, Any]:
    return json.loads(SOURCES_FILE.read_text(encoding="utf-8"))["datasets"]


def source_names() -> List[str]:
    return list(_entries())


def _key(name: str) -> str:
    key = name.strip().lower()
    entries = _entries()
    if key in entries:
        return key
    if key.startswith("elevater-cn/") and "<" not in key:
        return ELEVATER_PATTERN
    raise NoSourceError(unknown("dataset", name, entries))


def entry(name: str) -> Dict[str, Any]:
    return _entries()[_key(name)]


def verify_command(name: str, root: Path) -> str:
    e = entry(name)
    if e.get("verify_command"):
        return e["verify_command"]
    return f"ccmb datasets verify {name} --root {root}"


def manual_steps(name: str, root: Optional[Path] = None) -> str:
    """The manual route for ``name``: where to get it, what to expect, where to put it, how to check."""
    root = Path(root) if root is not None else datasets_dir()
    m = entry(name).get("manual")
    if not m:
        return ""
    files = "; ".join(m.get("files", []))
    put = m.get("put", "put them in <root>/").replace("<root>", str(root))
    return (f"get it from {m['url']} ({m.get('access', '')}); files: {files}; {put}; "
            f"then check the layout with `{verify_command(name, root)}`")


def is_fetchable(name: str) -> bool:
    try:
        return bool(entry(name).get("files"))
    except NoSourceError:
        return False


def dataset_artifact(name: str, root: Optional[Path] = None) -> Artifact:
    e = entry(name)
    where = f"{SOURCES_FILE.name}:{name}"
    files = tuple(file_spec_from_dict(f, where) for f in e.get("files", []))
    return Artifact(kind="datasets", name=name.strip().lower(), files=files, manual=manual_steps(name, root),
                    description=e.get("description", ""))


def archive_dir(name: str) -> Path:
    return downloads_dir() / "datasets" / name.strip().lower().replace("/", "__")


def fetch_dataset(name: str, root: Optional[Path] = None, *, allow_file: bool = False,
                  offline: Optional[bool] = None, keep_archives: bool = True,
                  report: Optional[Callable[[str], None]] = None) -> FetchResult:
    """Fetch ``name`` into ``root`` (default ``$CCMB_HOME/datasets``); a set that is already unpacked there is
    left alone. Raises :class:`ccmb.fetch.FetchError` (with the manual steps) when it cannot. ``report``
    receives a line per thing tried."""
    root = Path(root) if root is not None else datasets_dir()
    art = dataset_artifact(name, root)
    return fetch_artifact(art, archive_dir(name), unpack_to=root, allow_file=allow_file, offline=offline,
                          keep_archives=keep_archives, report=report)


def describe() -> List[Dict[str, Any]]:
    """One row per entry (for ``ccmb fetch list``)."""
    rows = []
    for name, e in _entries().items():
        rows.append({"name": name, "description": e.get("description", ""),
                     "fetchable": bool(e.get("files")),
                     "files": [{"name": f["name"], "size": f.get("size"), "sha256": f.get("sha256"),
                                "sources": f.get("sources", [])} for f in e.get("files", [])],
                     "manual": e.get("manual", {})})
    return rows
