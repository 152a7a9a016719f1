"""Every `marketpipe ...` command that README.md and docs/*.md show exists, with the options shown.

A cheap guard that the docs name real commands: each command line in a code block or code
span is run with --help (exit 0), and each --option it uses must be one the command takes.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from marketpipe.cli import main

REPO = Path(__file__).resolve().parents[1]
DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
_FENCE = re.compile(r"^(```|~~~).*?^\1", re.MULTILINE | re.DOTALL)
_SPAN = re.compile(r"`([^`\n]+)`")
# `marketpipe` where a shell line or a chained command starts (not output tables, not prose)
_INVOCATION = re.compile(
    r"(?:^|&&|;)[ \t]*(?:\$[ \t]+)?(?:[\w./-]*/)?marketpipe[ \t]+(?=[a-z-])([^\n]*)", re.MULTILINE
)
_END = {"#", "|", "||", "&&", ";", "\\", ">", "2>&1"}


def _code(text: str) -> list[str]:
    fenced = [block.group(0) for block in _FENCE.finditer(text)]
    prose = _FENCE.sub("", text)
    return fenced + [span.group(1) for span in _SPAN.finditer(prose)]


def _tokens(line: str) -> list[str]:
    try:
        words = shlex.split(line, comments=False)
    except ValueError:  # a quoted SQL query continued on the next line
        words = line.split()
    tokens = []
    for word in words:
        if word in _END or word.startswith("#"):
            break
        tokens.append(word)
    return tokens


def _invocations() -> list[tuple[str, tuple[str, ...], tuple[str, ...]]]:
    """(where, command path, --options used) of every marketpipe command line in the docs."""
    found = []
    for doc in DOCS:
        for code in _code(doc.read_text()):
            for match in _INVOCATION.finditer(code):
                path, options = _parse(_tokens(match.group(1)))
                found.append((f"{doc.name}: marketpipe {match.group(1).strip()[:60]}", path, options))
    return found


def _parse(tokens: list[str]) -> tuple[tuple[str, ...], tuple[str, ...]]:
    path: list[str] = []
    command: click.Command = main
    ctx = click.Context(main)
    rest = list(tokens)
    while rest and isinstance(command, click.Group) and not rest[0].startswith("-"):
        sub = command.get_command(ctx, rest[0].strip("`[]()"))
        if sub is None:
            break
        path.append(rest.pop(0).strip("`[]()"))
        command = sub
    options = []
    for token in rest:
        word = token.strip("[]()`,").split("=", 1)[0]
        if re.fullmatch(r"--[a-z][a-z0-9-]*", word):
            options.append(word)
    return tuple(path), tuple(options)


INVOCATIONS = _invocations()


def test_the_docs_show_marketpipe_commands() -> None:
    paths = {path for _, path, _ in INVOCATIONS}
    assert {("run",), ("sql",), ("tail",), ("sink",)} <= paths, sorted(paths)


@pytest.mark.parametrize(
    ("where", "path", "options"), INVOCATIONS, ids=[where for where, _, _ in INVOCATIONS]
)
def test_documented_command_exists_with_its_options(
    where: str, path: tuple[str, ...], options: tuple[str, ...]
) -> None:
    assert path or options, f"{where}: names no marketpipe command"
    result = CliRunner().invoke(main, [*path, "--help"])
    assert result.exit_code == 0, f"{where}: {result.output}"
    command: click.Command = main
    ctx = click.Context(main)
    for name in path:
        assert isinstance(command, click.Group)
        found = command.get_command(ctx, name)
        assert found is not None
        command = found
    known = {opt for param in command.params for opt in (*param.opts, *param.secondary_opts)}
    known.add("--help")
    unknown = [option for option in options if option not in known]
    assert not unknown, f"{where}: `marketpipe {' '.join(path)}` has no option {unknown}"
