"""Where a file can come from: plain http(s) URLs (and user mirrors), Hugging Face repos, Google Drive ids.

A registry entry lists its sources as JSON objects, tried in order:

- ``{"url": "https://..."}`` — a plain mirror (resumable, see :mod:`ccmb.fetch.http`);
- ``{"hf": "owner/repo", "file": "name", "repo_type": "dataset", "revision": "main"}`` — through
  ``huggingface_hub.hf_hub_download`` (honours ``HF_ENDPOINT``, e.g. a mirror such as https://hf-mirror.com);
- ``{"gdrive": "<file id>"}`` — through ``gdown`` (``$CCMB_GDRIVE_URL`` overrides the URL template
  ``https://drive.google.com/uc?id={id}``, e.g. for a proxy or a test server).

User mirrors come first: base URLs from ``$CCMB_MIRRORS`` (separated by spaces, commas or semicolons) and from
``$CCMB_HOME/mirrors.txt`` (one per line, ``#`` comments). A file is looked up at
``<base>/<kind>/<name>/<file>`` (kind ``models`` or ``datasets``), or at ``<base>`` with ``{kind}``, ``{name}``,
``{file}`` filled in when the base contains them.
"""
from __future__ import annotations

import logging
import os
import re
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional

from . import http
from .home import ccmb_home

logger = logging.getLogger(__name__)

GDRIVE_URL = "https://drive.google.com/uc?id={id}"


class SourceError(RuntimeError):
    """One source failed (the message names it); the caller moves on to the next."""


@dataclass(frozen=True)
class Source:
    """Base class: ``fetch(dest)`` writes the file at ``dest`` or raises :class:`SourceError`."""

    def describe(self) -> str:  # pragma: no cover - abstract
        raise NotImplementedError

    def fetch(self, dest: Path, *, allow_file: bool = False) -> Path:  # pragma: no cover - abstract
        raise NotImplementedError

    def to_dict(self) -> Dict[str, Any]:  # pragma: no cover - abstract
        raise NotImplementedError


@dataclass(frozen=True)
class UrlSource(Source):
    url: str
    user: bool = False  # from $CCMB_MIRRORS / mirrors.txt

    def describe(self) -> str:
        return ("mirror " if self.user else "") + self.url

    def fetch(self, dest: Path, *, allow_file: bool = False) -> Path:
        try:
            path, resumed = http.download(self.url, dest, allow_file=allow_file, progress=_progress(dest.name))
        except http.DownloadError as exc:
            raise SourceError(str(exc)) from exc
        if resumed:
            logger.info("%s: resumed at byte %d from %s", dest.name, resumed, self.url)
        return path

    def to_dict(self) -> Dict[str, Any]:
        return {"url": self.url}


@dataclass(frozen=True)
class HFSource(Source):
    repo: str
    file: str
    repo_type: str = "model"
    revision: str = "main"

    def endpoint(self) -> str:
        return (os.environ.get("HF_ENDPOINT") or "https://huggingface.co").rstrip("/")

    def url(self) -> str:
        prefix = {"model": "", "dataset": "datasets/", "space": "spaces/"}.get(self.repo_type, "")
        return f"{self.endpoint()}/{prefix}{self.repo}/resolve/{self.revision}/{self.file}"

    def describe(self) -> str:
        return f"Hugging Face {self.repo_type} {self.repo}/{self.file} ({self.url()})"

    def fetch(self, dest: Path, *, allow_file: bool = False) -> Path:
        try:
            from huggingface_hub import hf_hub_download
        except ImportError as exc:  # pragma: no cover - a declared dependency
            raise SourceError(f"{self.describe()}: huggingface_hub is not installed") from exc
        _reachable(self.endpoint(), self.describe())  # fail in seconds, not after huggingface_hub's retries
        # a stable folder beside the destination keeps huggingface_hub's own .incomplete file for resume
        local = dest.parent / f".hf-{dest.name}"
        try:
            got = hf_hub_download(self.repo, self.file, repo_type=self.repo_type, revision=self.revision,
                                  local_dir=str(local), endpoint=self.endpoint(),
                                  etag_timeout=http.connect_timeout())
        except Exception as exc:  # network errors, 404s, offline mode: the message says which
            raise SourceError(f"{self.describe()}: {http.describe_error(exc, self.url())}") from exc
        os.replace(got, dest)
        shutil.rmtree(local, ignore_errors=True)
        return dest

    def to_dict(self) -> Dict[str, Any]:
        return {"hf": self.repo, "file": self.file, "repo_type": self.repo_type, "revision": self.revision}


@dataclass(frozen=True)
class GDriveSource(Source):
    id: str

    def url(self) -> str:
        template = os.environ.get("CCMB_GDRIVE_URL") or GDRIVE_URL
        return template.format(id=self.id)

    def describe(self) -> str:
        return f"Google Drive {self.id} ({self.url()})"

    def fetch(self, dest: Path, *, allow_file: bool = False) -> Path:
        url = self.url()
        try:
            http.check_scheme(url, allow_file=False)
        except http.DownloadError as exc:
            raise SourceError(str(exc)) from exc
        _reachable(url, self.describe())  # fail in seconds with one readable line
        try:
            import gdown
        except ImportError as exc:  # pragma: no cover - a declared dependency
            raise SourceError(f"{self.describe()}: gdown is not installed (pip install gdown)") from exc
        timeout = http.connect_timeout()
        try:
            # gdown keeps <name>XXXXXXXX.part beside the output and resumes it with resume=True
            kwargs = {"timeout": (timeout, max(timeout, 60.0))} if _accepts(gdown.download, "timeout") else {}
            quiet = not (logger.isEnabledFor(logging.INFO) or sys.stderr.isatty())  # its own progress bar
            got = gdown.download(url=url, output=str(dest), quiet=quiet, resume=True, use_cookies=False, **kwargs)
        except Exception as exc:  # gdown raises its own errors, requests' and ValueError
            raise SourceError(f"{self.describe()}: {http.describe_error(exc, url)}") from exc
        if not got or not Path(got).is_file():
            raise SourceError(f"{self.describe()}: gdown returned no file")
        return Path(got)

    def to_dict(self) -> Dict[str, Any]:
        return {"gdrive": self.id}


def _reachable(url: str, what: str) -> None:
    """Resolve and connect to the host of ``url`` within the connect timeout, else :class:`SourceError`."""
    import socket
    import urllib.parse

    import urllib.request

    parts = urllib.parse.urlsplit(url)
    if urllib.request.getproxies().get(parts.scheme):  # through a proxy: a direct probe says nothing
        return
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        with socket.create_connection((parts.hostname or "", port), timeout=http.connect_timeout()):
            pass
    except OSError as exc:
        raise SourceError(f"{what}: {http.describe_error(exc, url)}") from exc


def _accepts(func, name: str) -> bool:
    import inspect

    try:
        return name in inspect.signature(func).parameters
    except (TypeError, ValueError):  # pragma: no cover
        return False


def _progress(name: str):
    """A tqdm progress callback for long transfers (silent when stderr is not a terminal)."""
    from tqdm.auto import tqdm

    bar = {"t": None}

    def update(done: int, total: Optional[int]) -> None:
        if bar["t"] is None:
            bar["t"] = tqdm(total=total, initial=done, unit="B", unit_scale=True, desc=name, disable=None,
                            leave=False)
        t = bar["t"]
        t.update(done - t.n)
        if total is not None and done >= total:
            t.close()

    return update


def parse_source(obj: Mapping[str, Any], where: str = "registry") -> Source:
    """A source from its JSON object (see module docstring)."""
    if "url" in obj:
        return UrlSource(str(obj["url"]))
    if "hf" in obj:
        if "file" not in obj:
            raise ValueError(f"{where}: hf source {obj!r} needs 'file'")
        return HFSource(str(obj["hf"]), str(obj["file"]), str(obj.get("repo_type", "model")),
                        str(obj.get("revision", "main")))
    if "gdrive" in obj:
        return GDriveSource(str(obj["gdrive"]))
    raise ValueError(f"{where}: unknown source {obj!r} (expected a 'url', 'hf' or 'gdrive' key)")


def user_mirrors() -> List[str]:
    """Mirror base URLs from ``$CCMB_MIRRORS`` then ``$CCMB_HOME/mirrors.txt``."""
    bases = [b for b in re.split(r"[\s,;]+", os.environ.get("CCMB_MIRRORS", "")) if b]
    cfg = ccmb_home() / "mirrors.txt"
    if cfg.is_file():
        for line in cfg.read_text(encoding="utf-8").splitlines():
            line = line.split("#", 1)[0].strip()
            if line:
                bases.append(line)
    return list(dict.fromkeys(bases))


def mirror_sources(kind: str, name: str, file: str) -> List[Source]:
    out: List[Source] = []
    for base in user_mirrors():
        if "{file}" in base:
            url = base.format(kind=kind, name=name, file=file)
        else:
            url = f"{base.rstrip('/')}/{kind}/{name}/{file}"
        out.append(UrlSource(url, user=True))
    return out
