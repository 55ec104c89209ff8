"""The dedup level registry: the only place ``ccmb dedup`` dispatches on a level.

Every module of this package defines one level, ``LEVEL = DedupLevel(...)``: its name, reason code, the
download columns it reads, what it computes per row while the folder is scanned (``prepare``), how it finds
its duplicates on an engine (``drops``), whether its relation is exact (equal values) and its command-line
options. The registry imports the package's modules by name, so adding a level is adding one file here
(or calling :func:`register_level` at run time); the CLI switches ``--NAME/--no-NAME`` and the options come
from the registry, and the levels run in ``order``.
"""
from __future__ import annotations

import importlib
import pkgutil
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Tuple

import pyarrow as pa

from ...tables.folder import DownloadFolder

#: The reason of an image that does not decode (image levels drop it; decontamination too).
REASON_UNDECODABLE = "undecodable_image"


@dataclass(frozen=True)
class Option:
    """A command-line option of a level, as data: ``--flag`` sets ``params[param]``."""

    flag: str
    param: str
    default: Any
    help: str
    type: Any = None  # a click type, or None for the type of ``default``
    enables: bool = False  # giving it switches the level on (``--semantic SCORES.parquet``)
    check: Optional[Callable[[Any], Optional[str]]] = None  # value -> error message (None: fine)


@dataclass(frozen=True)
class LevelContext:
    """What a level may read besides its rows: the download folder (its tars)."""

    folder: DownloadFolder


@dataclass(frozen=True)
class DedupLevel:
    """One row of the level table (see the module docstring).

    ``columns`` are the download columns it reads (a tuple, or a function of the config: the caption level's
    depend on ``--text-field``); ``prepare(table, config)`` returns the value columns (``fields``) the level
    needs per download row,
    computed once while the folder is scanned; ``drops(engine, rows, config, context)`` gets the rows still
    kept (key, shard, row id and the prepared columns) and returns a dataset of (key, reason, duplicate_of):
    the rows it drops and the kept row each stands for. ``value`` names the prepared column whose equal
    values make an exact level's groups (build-shards regroups restored duplicates by it)."""

    name: str
    reason: str
    help: str
    order: int
    drops: Callable[..., Any]
    columns: Any = ()
    prepare: Optional[Callable[[pa.Table, "DedupConfig"], Dict[str, Any]]] = None
    fields: Tuple[pa.Field, ...] = ()
    exact: bool = False
    default: bool = True
    options: Tuple[Option, ...] = ()
    value: Optional[str] = None

    @property
    def flag(self) -> str:
        return f"--{self.name}/--no-{self.name}"


_REGISTERED: Dict[str, DedupLevel] = {}
_LOADED = False


def _load() -> None:
    global _LOADED
    if _LOADED:
        return
    _LOADED = True
    for info in pkgutil.iter_modules(__path__):
        module = importlib.import_module(f"{__name__}.{info.name}")
        level = getattr(module, "LEVEL", None)
        if isinstance(level, DedupLevel):
            register_level(level)


def levels() -> "OrderedDict[str, DedupLevel]":
    """The level table, in run order."""
    _load()
    return OrderedDict(sorted(_REGISTERED.items(), key=lambda kv: (kv[1].order, kv[0])))


def register_level(level: DedupLevel) -> None:
    """Add a dedup level (a module of this package is registered by its ``LEVEL``)."""
    if level.name in _REGISTERED and _REGISTERED[level.name] is not level:
        raise ValueError(f"dedup level {level.name!r} is already registered")
    flags = {o.param for lv in _REGISTERED.values() if lv.name != level.name for o in lv.options}
    clash = [o.param for o in level.options if o.param in flags]
    if clash:
        raise ValueError(f"dedup level {level.name!r}: options {clash} belong to another level")
    _REGISTERED[level.name] = level


def unregister_level(name: str) -> None:
    _REGISTERED.pop(name, None)


def get_level(name: str) -> DedupLevel:
    table = levels()
    try:
        return table[name]
    except KeyError:
        raise ValueError(f"unknown dedup level {name!r}; choose from {tuple(table)}") from None


def duplicate_reasons(exact: Optional[bool] = None) -> List[str]:
    """Reason codes of the registered levels (only exact or only near ones when ``exact`` is given)."""
    return [lv.reason for lv in levels().values() if exact is None or lv.exact == exact]


def options() -> Dict[str, Option]:
    """Every level option by its parameter name."""
    return {o.param: o for lv in levels().values() for o in lv.options}


@dataclass
class DedupConfig:
    """The enabled levels (in run order) and their parameters (defaults from the levels' options)."""

    levels: Tuple[str, ...] = ()
    params: Dict[str, Any] = field(default_factory=dict)
    workers: int = 1
    progress: bool = False

    def __post_init__(self) -> None:
        table = levels()
        if not self.levels:
            self.levels = tuple(name for name, lv in table.items() if lv.default)
        bad = [lv for lv in self.levels if lv not in table]
        if bad:
            raise ValueError(f"unknown dedup levels {bad}; choose from {tuple(table)}")
        self.levels = tuple(name for name in table if name in self.levels)
        known = options()
        unknown = [p for p in self.params if p not in known]
        if unknown:
            raise ValueError(f"unknown dedup parameters {unknown}; known: {sorted(known)}")
        self.params = {**{p: o.default for p, o in known.items()}, **self.params}
        for p, o in known.items():
            problem = o.check(self.params[p]) if o.check is not None else None
            if problem:
                raise ValueError(f"{o.flag}: {problem}")

    def __getitem__(self, param: str) -> Any:
        return self.params[param]

    def enabled(self) -> List[DedupLevel]:
        table = levels()
        return [table[name] for name in self.levels]

    def columns(self) -> List[str]:
        """The download columns the enabled levels read (key and status first)."""
        out = ["key", "status"]
        for lv in self.enabled():
            cols = lv.columns(self) if callable(lv.columns) else lv.columns
            out += [c for c in cols if c not in out]
        return out

    def fields(self) -> List[pa.Field]:
        return [f for lv in self.enabled() for f in lv.fields]

    def describe(self) -> Dict[str, Any]:
        """What a dedup decision table records of its run (JSON): the levels and the parameters of each
        (e.g. ``phash``: threshold, bands, ``image_check``)."""
        table = levels()

        def plain(v):
            return v if v is None or isinstance(v, (bool, int, float, str)) else str(v)

        return {"levels": list(self.levels),
                "params": {name: {o.param: plain(self.params[o.param]) for o in table[name].options}
                           for name in self.levels}}
