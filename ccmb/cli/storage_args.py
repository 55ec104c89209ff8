"""Command-line arguments that name corpus data: a local path or an fsspec URL (``s3://bucket/shards``).

``click.Path(exists=True)`` refuses URLs; :class:`Location` checks the same things through
:mod:`ccmb.storage` (a folder that exists, a file that exists) and keeps the value a string.
"""
from __future__ import annotations

from typing import Any, Optional

import click


class Location(click.ParamType):
    """A local path or fsspec URL; ``exists``: it must be there; ``dir_okay`` / ``file_okay`` as click.Path."""

    name = "path_or_url"

    def __init__(self, exists: bool = False, file_okay: bool = True, dir_okay: bool = True) -> None:
        self.exists, self.file_okay, self.dir_okay = exists, file_okay, dir_okay

    def convert(self, value: Any, param: Optional[click.Parameter], ctx: Optional[click.Context]) -> str:
        from .. import storage  # light: the standard library only until a URL is used

        text = str(value)
        if not self.exists:
            return text
        try:
            is_dir = storage.isdir(text)
            is_file = not is_dir and storage.isfile(text)
        except OSError as exc:
            self.fail(str(exc), param, ctx)
        if not (is_dir or is_file):
            self.fail(f"{text}: does not exist", param, ctx)
        if is_dir and not self.dir_okay:
            self.fail(f"{text}: is a folder", param, ctx)
        if is_file and not self.file_okay:
            self.fail(f"{text}: is a file, not a folder", param, ctx)
        return text
