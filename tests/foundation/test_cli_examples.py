"""Every command of both command lines ends its --help with examples that name real commands and options."""
from __future__ import annotations

import shlex

import click
import pytest
from click.testing import CliRunner

from ccmb.cli import main as ccmb_main
from ccmb.clikit import example_lines, examples, examples_to_epilog, iter_commands
from ccmb_bench.cli import main as bench_main

PROGRAMS = {"ccmb": ccmb_main, "ccmb-bench": bench_main}
COMMANDS = [(prog, path) for prog, main in PROGRAMS.items() for path, _ in iter_commands(main)]


def _command(main: click.Command, path):
    cmd = main
    for name in path:
        cmd = cmd.commands[name]
    return cmd


def _options(cmd: click.Command):
    return {o for p in cmd.params for o in (*p.opts, *p.secondary_opts)}


def _resolve(prog: str, example: str):
    """(command path, command, arguments) an example line runs (``torchrun ... "$(which ccmb)" ...`` too)."""
    tokens = shlex.split(example)
    if tokens[0] == prog:
        rest = tokens[1:]
    else:
        assert tokens[0] == "torchrun" and f"$(which {prog})" in tokens, example
        rest = tokens[tokens.index(f"$(which {prog})") + 1:]
    cmd, path = PROGRAMS[prog], []
    while rest and rest[0] in getattr(cmd, "commands", {}):
        cmd = cmd.commands[rest[0]]
        path.append(rest.pop(0))
    return tuple(path), cmd, rest


@pytest.mark.parametrize("prog,path", COMMANDS, ids=[" ".join((p, *path)) for p, path in COMMANDS])
def test_help_ends_with_examples_of_this_command(prog, path):
    main = PROGRAMS[prog]
    res = CliRunner().invoke(main, [*path, "--help"], terminal_width=120)
    assert res.exit_code == 0, res.output
    lines = res.output.rstrip().splitlines()
    heading = max((i for i, line in enumerate(lines) if line.strip() == "Examples:"), default=None)
    assert heading is not None, f"`{prog} {' '.join(path)} --help` has no Examples: section"
    tail = lines[heading + 1:]
    assert tail and all(line.startswith("    ") for line in tail), f"the examples are not the end of --help: {tail}"
    cmd = _command(main, path)
    shown = example_lines(cmd)
    assert shown, cmd
    for example in shown:
        ran, target, args = _resolve(prog, example)
        assert ran[:len(path)] == tuple(path), f"{example!r} does not run `{prog} {' '.join(path)}`"
        runs_alone = not getattr(target, "commands", None) or getattr(target, "invoke_without_command", False)
        assert runs_alone or ran == tuple(path), f"{example!r} stops at a group"
        known = _options(target) | _options(main)
        for token in args:
            if token == "--":  # what follows is another program's command line (ccmb demo serve)
                break
            if token.startswith("-") and not token[1:].replace(".", "").isdigit():
                assert token.split("=")[0] in known, f"{example!r}: {token} is not an option of {' '.join(ran)}"


def test_docstring_examples_move_to_the_end():
    @click.command()
    @click.option("--n", type=int)
    def cmd(n):
        """Do it.

        More words.

        \b
        Examples:
          tool --n 3
          tool --n 4 \\
              --verbose
        """

    examples_to_epilog(cmd)
    assert cmd.help.rstrip().endswith("More words.") and "Examples" not in cmd.help
    assert example_lines(cmd) == ["tool --n 3", "tool --n 4 --verbose"]
    out = CliRunner().invoke(cmd, ["--help"]).output.rstrip().splitlines()
    assert out[-4:] == ["  Examples:", "    tool --n 3", "    tool --n 4 \\", "        --verbose"]


def test_examples_decorator_and_no_example():
    @examples("tool a", "tool b --x")
    @click.command()
    def cmd():
        """Nothing else."""

    assert example_lines(cmd) == ["tool a", "tool b --x"]
    with pytest.raises(ValueError):
        examples()

    @click.command()
    def bare():
        """No examples here."""

    examples_to_epilog(bare)
    assert example_lines(bare) == [] and bare.epilog is None
