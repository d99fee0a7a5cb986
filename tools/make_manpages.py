"""Write the vstor man pages from the command's own parser, so they cannot drift from it.

    python -m tools.make_manpages [OUTDIR]      (default build/man; run by 'make man')

vstor.1 lists the top-level commands; vstor-COMMAND.1 describes each of them with its
subcommands and their options, from the same help texts ``--help`` prints. Plain troff with
the man macros: read one with ``man -l build/man/vstor.1``.
"""

from __future__ import annotations

import argparse
import os
import sys

from vstor import __version__
from vstor.cli.main import build_parser


def esc(text: str) -> str:
    """Text for troff: backslashes and hyphens escaped, no line starting with a control character."""
    text = text.replace("\\", "\\e").replace("-", "\\-")
    return "\n".join("\\&" + line if line[:1] in (".", "'") else line for line in text.splitlines())


def subparsers(parser: argparse.ArgumentParser) -> argparse._SubParsersAction | None:
    return next((a for a in parser._actions if isinstance(a, argparse._SubParsersAction)), None)


def commands(parser: argparse.ArgumentParser) -> list[tuple[str, str, argparse.ArgumentParser]]:
    """(name, help, parser) of each subcommand, in the order they were added."""
    sub = subparsers(parser)
    if sub is None:
        return []
    helps = {a.dest: a.help or "" for a in sub._choices_actions}
    return [(name, helps.get(name, ""), p) for name, p in sub.choices.items()]


def options(parser: argparse.ArgumentParser) -> list[argparse.Action]:
    return [a for a in parser._actions
            if not isinstance(a, argparse._HelpAction | argparse._SubParsersAction) and a.help != argparse.SUPPRESS]


def metavar(parser: argparse.ArgumentParser, action: argparse.Action) -> str:
    if action.nargs == 0:
        return ""
    default = action.dest if not action.option_strings else action.dest.upper()
    return parser._get_formatter()._format_args(action, default)


def synopsis(parser: argparse.ArgumentParser) -> str:
    """One usage line: the command in bold, options in brackets unless required."""
    words = [f".B {esc(parser.prog)}"]
    for a in options(parser):
        arg = metavar(parser, a)
        if a.option_strings:
            text = f"\\fB{esc(a.option_strings[-1])}\\fR" + (f" \\fI{esc(arg)}\\fR" if arg else "")
            words.append(text if a.required else f"[{text}]")
        else:
            words.append(f"\\fI{esc(arg)}\\fR")
    sub = subparsers(parser)
    if sub is not None:
        words.append("\\fICOMMAND\\fR ...")
    return words[0] + "\n" + " ".join(words[1:])


def option_list(parser: argparse.ArgumentParser) -> list[str]:
    out = []
    fmt = parser._get_formatter()
    for a in options(parser):
        arg = metavar(parser, a)
        names = ", ".join(f"\\fB{esc(o)}\\fR" for o in a.option_strings) or f"\\fI{esc(arg)}\\fR"
        if a.option_strings and arg:
            names += f" \\fI{esc(arg)}\\fR"
        out += [".TP", names, esc(fmt._expand_help(a)) if a.help else "\\&"]
    return out


def header(name: str, summary: str) -> list[str]:
    return [f'.TH {name.upper()} 1 "" "vstor {__version__}" "vstor manual"', ".nh", ".ad l",
            ".SH NAME", f"{esc(name)} \\- {esc(summary)}"]


def top_page(parser: argparse.ArgumentParser) -> str:
    cmds = commands(parser)
    description = parser.description or ""
    lines = header("vstor", description.split(": ", 1)[-1])
    lines += [".SH SYNOPSIS", synopsis(parser), ".SH DESCRIPTION", esc(description),
              ".PP", "Each command has its own page, named below.", ".SH COMMANDS"]
    for name, help_, _ in cmds:
        lines += [".TP", f"\\fB{esc(name)}\\fR", f"{esc(help_)}; see \\fBvstor\\-{esc(name)}\\fR(1)"]
    lines += [".SH OPTIONS", *option_list(parser), ".SH ENVIRONMENT", ".TP", ".B VSTOR_POOL",
              "the pool of commands given no \\fB\\-\\-pool\\fR", ".TP", ".B VSTOR_DEBUG",
              "set to 1 to print the traceback of an internal error",
              ".SH SEE ALSO", ",\n".join(f".BR vstor\\-{esc(name)} (1)" for name, _, _ in cmds)]
    return "\n".join(lines) + "\n"


def command_page(name: str, help_: str, parser: argparse.ArgumentParser) -> str:
    lines = header(f"vstor-{name}", help_)
    subs = commands(parser)
    if not subs:
        lines += [".SH SYNOPSIS", synopsis(parser), ".SH OPTIONS", *option_list(parser)]
    else:
        lines += [".SH SYNOPSIS"]
        for i, (_, _, p) in enumerate(subs):
            lines += ([".br"] if i else []) + [synopsis(p)]
        lines += [".SH COMMANDS"]
        for sub_name, sub_help, p in subs:
            lines += [f'.SS "{esc(p.prog)}"', esc(sub_help) if sub_help else "\\&", *option_list(p)]
            for _, deeper_help, q in commands(p):  # a third level, if a command has one
                lines += [f'.SS "{esc(q.prog)}"', esc(deeper_help or sub_name), *option_list(q)]
    lines += [".SH SEE ALSO", ".BR vstor (1)"]
    return "\n".join(lines) + "\n"


def write_pages(outdir: str) -> list[str]:
    """Write vstor.1 and vstor-COMMAND.1 into ``outdir``; return their paths."""
    os.makedirs(outdir, exist_ok=True)
    parser = build_parser()
    pages = {"vstor.1": top_page(parser)}
    for name, help_, p in commands(parser):
        pages[f"vstor-{name}.1"] = command_page(name, help_, p)
    paths = []
    for fname, text in pages.items():
        path = os.path.join(outdir, fname)
        with open(path, "w") as f:
            f.write(text)
        paths.append(path)
    return paths


def main() -> int:
    p = argparse.ArgumentParser(prog="make_manpages.py", description=__doc__.strip().splitlines()[0])
    p.add_argument("outdir", nargs="?", default=os.path.join("build", "man"), help="where to write (default build/man)")
    outdir = p.parse_args().outdir
    paths = write_pages(outdir)
    print(f"wrote {len(paths)} man pages to {outdir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
