"""Type aliases shared by every package (import them from here; do not define local copies)."""
from __future__ import annotations

import os
from typing import Union

#: A filesystem path as the public APIs accept it: ``str`` or any ``os.PathLike`` (``pathlib.Path``, ...).
PathLike = Union[str, "os.PathLike[str]"]

__all__ = ["PathLike"]
