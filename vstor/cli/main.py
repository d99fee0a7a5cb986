# PYTHON_ARGCOMPLETE_OK
"""Entry point of the ``vstor`` command. Errors become one line on stderr and an exit code.

Shell completion: argcomplete (``vstor completion bash``); the marker above lets its global
completion hook pick the command up."""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import traceback

from vstor import __version__
from vstor.errlog import describe, one_line
from vstor.errors import VstorError

# The modules that register the top-level commands, in the order of ``vstor --help``.
MODULES = ("pool_cmd", "array_cmd", "status_cmd", "volumes.volume_cmd", "volumes.group_cmd",
           "volumes.snapshot_cmd", "pki_cmd", "volumes.pair_cmd", "backups.media_cmd", "backups.backup_cmd",
           "admin_cmd", "backups.client_cmd", "service_cmd")
# Each top-level command and the one module that registers it: a command line that names one
# imports only that module, not all of them (every `vstor` call pays for what it imports).
# tests/test_cli_imports.py checks this table against the full parser.
COMMANDS = {"pool": "pool_cmd", "array": "array_cmd", "status": "status_cmd", "volume": "volumes.volume_cmd",
            "group": "volumes.group_cmd", "snapshot": "volumes.snapshot_cmd", "pki": "pki_cmd",
            "pair": "volumes.pair_cmd", "library": "backups.media_cmd", "media": "backups.media_cmd",
            "backup": "backups.backup_cmd", "audit": "backups.backup_cmd", "key": "backups.backup_cmd",
            "admin": "admin_cmd", "client": "backups.client_cmd", "install-service": "service_cmd",
            "completion": "service_cmd"}


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        print(f"vstor: error: {message} (see '{self.prog} --help')", file=sys.stderr)
        raise SystemExit(2)


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The whole parser; with ``command`` (a key of COMMANDS), only the module that registers it."""
    p = _Parser(prog="vstor", description="vstor: a user-space virtual block storage array")
    p.add_argument("--version", action="version", version=f"vstor {__version__}")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)
    for name in MODULES if command is None else (COMMANDS[command],):
        importlib.import_module(f"vstor.cli.{name}").register(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    """Run one command. Every failure is one ``vstor: error:`` line on stderr and an exit code;
    a reader that closes our stdout early (``| head``) ends the command quietly, with exit
    status 0: what it was asked for was produced, the reader wanted no more of it."""
    argv = sys.argv[1:] if argv is None else argv
    completing = "_ARGCOMPLETE" in os.environ
    parser = build_parser(argv[0] if argv and argv[0] in COMMANDS and not completing else None)
    if completing:  # a completion request from the shell: answers and exits
        import argcomplete

        argcomplete.autocomplete(parser)
    args = parser.parse_args(_glue_negative_values(argv))
    try:
        code = int(args.func(args) or 0)
        sys.stdout.flush()  # here, not at exit, so a closed pipe is caught below
        return code
    except BrokenPipeError:
        return _stdout_closed()
    except VstorError as e:
        return _error(one_line(e), e.exit_code)
    except KeyboardInterrupt:
        print("vstor: interrupted", file=sys.stderr)
        return 130
    except OSError as e:
        return _error(one_line(e.strerror or e) + (f": {e.filename}" if e.filename else ""), 1)
    except Exception as e:  # a bug: one line and a way to see more, never a bare traceback
        if os.environ.get("VSTOR_DEBUG"):
            traceback.print_exc()
        return _error(f"internal error {describe(e)} (a bug; rerun with VSTOR_DEBUG=1 for the traceback "
                      "and report it)", 70)


def _glue_negative_values(argv: list[str]) -> list[str]:
    """``--size -5G`` -> ``--size=-5G``: argparse takes a value that starts with "-" for an option
    and fails with "expected one argument"; glued, the value reaches its parser (parse_size), which
    says what is wrong with it in one line."""
    out: list[str] = []
    for tok in argv:
        if (out and out[-1].startswith("--") and "=" not in out[-1] and len(tok) > 1 and tok[0] == "-"
                and tok[1].isdigit()):
            out[-1] = f"{out[-1]}={tok}"
        else:
            out.append(tok)
    return out


def _error(line: str, code: int) -> int:
    try:
        sys.stdout.flush()
    except BrokenPipeError:
        return _stdout_closed()
    print(f"vstor: error: {line}", file=sys.stderr)
    return code


def _stdout_closed() -> int:
    """stdout's reader is gone: point stdout at /dev/null so the flush at exit stays quiet."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)
    return 0


if __name__ == "__main__":
    sys.exit(main())
