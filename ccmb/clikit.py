"""Helpers shared by the command lines of every package: logging set-up, the input-error decorator, the
``KEY=VALUE`` option parser, and examples at the end of every ``--help``.

Deliberately light (``click`` and the standard library only) and below every CLI: ``ccmb-bench`` imports it
without loading the ``ccmb`` commands (and with them pyarrow, numpy or PIL), so ``--help`` stays fast.
"""
from __future__ import annotations

import functools
import logging
import os
from typing import Callable, Dict, Iterable, Iterator, List, Tuple, Type

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


# ------------------------------------------------------------------------------------------ examples
#: The heading of the example section that ends every command's ``--help``.
EXAMPLES_HEADING = "Examples:"


def _examples_text(lines: Iterable[str]) -> str:
    body = "\n".join(f"  {line.strip()}" if not line.startswith(" ") else line for line in lines)
    return f"\b\n{EXAMPLES_HEADING}\n{body}"


def examples(*lines: str) -> Callable:
    """Decorator (above ``@click.command``/``@group.command``) whose example command lines end the command's
    ``--help`` (click's epilog, printed after the options, never re-wrapped).

    >>> @examples("ccmb shards ls shards/", "ccmb shards ls shards/ --json")   # doctest: +SKIP
    ... @click.command("ls")
    """
    if not lines:
        raise ValueError("examples(): give at least one example command line")

    def apply(cmd: click.Command) -> click.Command:
        cmd.epilog = _examples_text(lines)
        return cmd

    return apply


def examples_to_epilog(cmd: click.Command) -> None:
    """Move an ``Example:``/``Examples:`` section at the end of a command's docstring into its epilog, so that
    ``--help`` ends with it (after the options); a command with an epilog already is left as it is."""
    if cmd.epilog or not cmd.help:
        return
    lines = cmd.help.splitlines()
    heads = [i for i, line in enumerate(lines) if line.strip().lower() in ("example:", "examples:")]
    if not heads:
        return
    start = heads[-1]
    body = [line for line in lines[start + 1:] if line.strip() and line.strip() != "\b"]
    if not body:
        return
    if start and lines[start - 1].strip() == "\b":  # click's "do not re-wrap" marker of the section
        start -= 1
    indent = min(len(line) - len(line.lstrip()) for line in body)
    cmd.help = "\n".join(lines[:start]).rstrip()
    cmd.epilog = _examples_text("  " + line[indent:] if line[indent:].startswith(" ") else line[indent:]
                                for line in body)


def iter_commands(cmd: click.Command, path: Tuple[str, ...] = ()) -> Iterator[Tuple[Tuple[str, ...], click.Command]]:
    """``(path, command)`` of ``cmd`` and every sub-command below it (depth first, by name)."""
    yield path, cmd
    for name, sub in sorted(getattr(cmd, "commands", {}).items()):
        yield from iter_commands(sub, path + (name,))


def finish_help(main: click.Command) -> click.Command:
    """Give every command below ``main`` (and ``main``) its examples at the end of ``--help``: docstring
    example sections move to the epilog (:func:`examples_to_epilog`). Call it once the commands are added."""
    for _, cmd in iter_commands(main):
        examples_to_epilog(cmd)
    return main


def example_lines(cmd: click.Command) -> List[str]:
    """The example command lines that end ``cmd``'s ``--help`` (continuation lines joined), or ``[]``."""
    text = cmd.epilog or ""
    if EXAMPLES_HEADING not in text:
        return []
    out: List[str] = []
    for line in text.split(EXAMPLES_HEADING, 1)[1].splitlines():
        line = line.strip()
        if not line:
            continue
        if out and out[-1].endswith("\\"):
            out[-1] = out[-1][:-1].rstrip() + " " + line
        else:
            out.append(line)
    return out
