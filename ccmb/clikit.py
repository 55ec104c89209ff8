"""Helpers shared by the command lines of every package: logging set-up, the input-error decorator and the
``KEY=VALUE`` option parser.

Deliberately light (``click`` and the standard library only) and below every CLI: ``ccmb-bench`` imports it
without loading the ``ccmb`` commands (and with them pyarrow, numpy or PIL), so ``--help`` stays fast.
"""
from __future__ import annotations

import functools
import logging
import os
from typing import Callable, Dict, Iterable, Tuple, Type

import click

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def setup_logging(verbose: int) -> None:
    """0: warnings, 1: info, 2+: debug. ``CCMB_LOG_LEVEL`` (e.g. ``debug``) overrides."""
    level = {0: logging.WARNING, 1: logging.INFO}.get(verbose, logging.DEBUG)
    env = os.environ.get("CCMB_LOG_LEVEL")
    if env:
        level = getattr(logging, env.upper(), level)
    logging.basicConfig(level=level, format=LOG_FORMAT, force=True)


#: Errors that mean "bad input" (a wrong name, path, file or setting): the library raises these with a
#: message naming the culprit, so the CLI shows the message, not a traceback.
INPUT_ERRORS: Tuple[Type[BaseException], ...] = (ValueError, FileNotFoundError)


def input_errors_as_click(func: Callable) -> Callable:
    """Turn :data:`INPUT_ERRORS` raised by a command into ``Error: <message>`` (exit 1); the traceback is
    logged at debug level (``-vv``)."""

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        try:
            return func(*args, **kwargs)
        except INPUT_ERRORS as exc:
            logging.getLogger(func.__module__).debug("traceback", exc_info=True)
            raise click.ClickException(str(exc)) from exc

    return wrapper


def parse_key_values(pairs: Iterable[str], param_hint: str = "--param") -> Dict[str, str]:
    """``("a=1", "b=x=y")`` -> ``{"a": "1", "b": "x=y"}``: split at the first ``=``, strip the key, keep the
    value as given (strings; the receiver converts). A later repeat of a key wins. A pair without ``=`` or
    with an empty key is a :class:`click.BadParameter` naming the option."""
    out: Dict[str, str] = {}
    for pair in pairs:
        key, eq, value = pair.partition("=")
        key = key.strip()
        if not eq or not key:
            raise click.BadParameter(f"expected KEY=VALUE, got {pair!r}", param_hint=param_hint)
        out[key] = value
    return out
