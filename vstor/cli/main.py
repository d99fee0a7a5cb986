"""Entry point of the ``vstor`` command. Errors become one line on stderr and an exit code."""

from __future__ import annotations

import argparse
import sys

from vstor import __version__
from vstor.cli import array_cmd, group_cmd, media_cmd, pair_cmd, pki_cmd, pool_cmd, snapshot_cmd, volume_cmd
from vstor.errors import VstorError


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        print(f"vstor: error: {message} (see '{self.prog} --help')", file=sys.stderr)
        raise SystemExit(2)


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="vstor", description="vstor: a user-space virtual block storage array")
    p.add_argument("--version", action="version", version=f"vstor {__version__}")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)
    pool_cmd.register(sub)
    array_cmd.register(sub)
    volume_cmd.register(sub)
    group_cmd.register(sub)
    snapshot_cmd.register(sub)
    pki_cmd.register(sub)
    pair_cmd.register(sub)
    media_cmd.register(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except VstorError as e:
        print(f"vstor: error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("vstor: interrupted", file=sys.stderr)
        return 130
    except OSError as e:
        print(f"vstor: error: {e.strerror or e}" + (f": {e.filename}" if e.filename else ""), file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
