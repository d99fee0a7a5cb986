"""vstor install-service | completion: the array as a systemd service, and shell completion."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from importlib import resources

from vstor.errors import ExternalToolError, UsageError

UNIT_TEMPLATE = "vstor@.service"
UNIT_DIR = "etc/systemd/system"
CONF_DIR = "etc/vstor"


def register(sub: argparse._SubParsersAction) -> None:
    s = sub.add_parser("install-service", help="run a pool's array as the systemd service vstor@INSTANCE")
    s.add_argument("pool", metavar="POOL", help="pool directory")
    s.add_argument("--mount", required=True, help="directory for the FUSE mount")
    s.add_argument("--key-file", help="key of an encrypted pool (default: the path given at init)")
    s.add_argument("--root", default="/", help="install under this directory instead of / (no systemctl)")
    s.add_argument("--dry-run", action="store_true", help="print what would be written and run; change nothing")
    s.set_defaults(func=cmd_install_service)
    c = sub.add_parser("completion", help="print the shell completion script")
    c.add_argument("shell", choices=["bash", "zsh", "fish"], nargs="?", default="bash",
                   help="the shell to print the completion script for (default bash)")
    c.set_defaults(func=cmd_completion)


def escape_path(path: str) -> str:
    """``systemd-escape --path PATH``: the unit instance name for a path."""
    parts = [p for p in path.split("/") if p not in ("", ".")]
    if not parts:
        return "-"
    out = []
    for i, byte in enumerate("/".join(parts).encode()):
        c = chr(byte)
        if c == "/":
            out.append("-")
        elif (c.isascii() and c.isalnum()) or c in ":_" or (c == "." and i > 0):
            out.append(c)
        else:
            out.append(f"\\x{byte:02x}")
    return "".join(out)


def unit_text(python: str = sys.executable) -> str:
    """The template unit with this installation's interpreter in ExecStart and ExecStop."""
    text = resources.files("vstor.control").joinpath("systemd", UNIT_TEMPLATE).read_text()
    return text.replace("@PYTHON@", python)


def conf_text(mount: str, key_file: str | None) -> str:
    lines = ["# vstor@.service settings for this pool (see docs/admin-guide.md)", f"VSTOR_MOUNT={mount}"]
    lines.append(f"VSTOR_DAEMON_ARGS=--key-file {key_file}" if key_file else "VSTOR_DAEMON_ARGS=")
    return "\n".join(lines) + "\n"


def systemd_running() -> bool:
    """systemd is PID 1 (sd_booted(3): the directory it creates at boot)."""
    return os.path.isdir("/run/systemd/system")


def cmd_install_service(args: argparse.Namespace) -> int:
    from vstor.store.superblock import load_superblock

    pool, mount = os.path.abspath(args.pool), os.path.abspath(args.mount)
    load_superblock(pool)  # a clear error if it is not a pool
    for name, value in (("pool", pool), ("--mount", mount), ("--key-file", args.key_file or "")):
        if any(c.isspace() for c in value):
            raise UsageError(f"{name} {value!r} contains white space, which the unit's command line would split")
    key_file = os.path.abspath(args.key_file) if args.key_file else None
    instance = escape_path(pool)
    unit = f"vstor@{instance}.service"
    files = [(os.path.join(args.root, UNIT_DIR, UNIT_TEMPLATE), unit_text(), 0o644),
             (os.path.join(args.root, CONF_DIR, f"{instance}.conf"), conf_text(mount, key_file), 0o600)]
    verb = "would write" if args.dry_run else "wrote"
    for path, text, mode in files:
        if not args.dry_run:
            os.makedirs(os.path.dirname(path), exist_ok=True)
            tmp = path + ".tmp"
            with open(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode), "w") as f:
                f.write(text)
            os.chmod(tmp, mode)
            os.replace(tmp, path)
        print(f"{verb} {path}")
    commands = [["systemctl", "daemon-reload"], ["systemctl", "enable", unit]]
    if os.path.realpath(args.root) != "/":
        print(f"installed under {args.root}: not running systemctl")
    elif not systemd_running():
        print("systemd is not running on this machine: not running 'systemctl daemon-reload' and "
              f"'systemctl enable {unit}'")
    else:
        for cmd in commands:
            if args.dry_run:
                print(f"would run {' '.join(cmd)}")
                continue
            r = subprocess.run(cmd, capture_output=True, text=True)
            if r.returncode:
                msg = (r.stderr.strip() or f"exit {r.returncode}").splitlines()[-1]
                raise ExternalToolError(f"{' '.join(cmd)} failed: {msg}")
            print(f"ran {' '.join(cmd)}")
    print(f"start it with: systemctl start {unit}; logs: journalctl -u {unit}")
    return 0


def cmd_completion(args: argparse.Namespace) -> int:
    import argcomplete

    sys.stdout.write(argcomplete.shellcode(["vstor"], shell=args.shell))
    return 0
