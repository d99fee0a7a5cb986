"""Every option of the ``vstor`` command line has a help text, and every --help works."""

from __future__ import annotations

import argparse
import contextlib
import io

import pytest

from vstor.cli.main import build_parser, main


def _parsers(p: argparse.ArgumentParser, path: tuple[str, ...] = ()):
    """(command words, parser) for the parser and each of its subparsers, recursively."""
    yield path, p
    for action in p._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _parsers(sub, (*path, name))


def _all() -> list[tuple[tuple[str, ...], argparse.ArgumentParser]]:
    seen: set[int] = set()
    out = []
    for path, p in _parsers(build_parser()):
        if id(p) not in seen:  # aliases share a parser
            seen.add(id(p))
            out.append((path, p))
    return out


def test_every_argument_has_help() -> None:
    missing = []
    for path, p in _all():
        for action in p._actions:
            if isinstance(action, argparse._HelpAction):
                continue
            if isinstance(action, argparse._SubParsersAction):
                # each subcommand is listed with its help in the parent's --help
                missing += [f"{' '.join((*path, c.dest))} (subcommand)" for c in action._choices_actions
                            if not (c.help or "").strip()]
                continue
            if not (action.help or "").strip() or action.help == argparse.SUPPRESS:
                missing.append(f"vstor {' '.join(path)}: {'/'.join(action.option_strings) or action.dest}")
    assert not missing, "arguments without help:\n" + "\n".join(missing)


@pytest.mark.parametrize("path", [path for path, _ in _all()], ids=lambda p: " ".join(p) or "vstor")
def test_help_exits_0(path: tuple[str, ...]) -> None:
    out = io.StringIO()
    with contextlib.redirect_stdout(out), pytest.raises(SystemExit) as e:
        main([*path, "--help"])
    assert e.value.code == 0
    assert "usage: vstor" in out.getvalue()
