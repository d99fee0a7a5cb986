"""The admin tool starts without loading the store or cryptography's x509.

Every `vstor` command pays for what the CLI imports: loading the store, pool check and PKI
modules up front doubled the start-up of every command (0.23 -> 0.50 s on a slow machine,
docs/benchmarks.md §5). Commands that need them import them when they run.
"""

from __future__ import annotations

import subprocess
import sys

HEAVY = ("vstor.store.store", "vstor.store.check", "vstor.control.service", "vstor.replication.pki",
         "cryptography.x509")


def test_cli_parser_does_not_import_the_store_or_pki():
    code = ("import sys, vstor.cli.main as m; m.build_parser(); "
            f"print(','.join(n for n in {HEAVY!r} if n in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "", f"imported at CLI start-up: {out}"


def test_each_command_line_builds_only_the_module_that_registers_its_command():
    """main() builds the parser of the command named on the command line only: COMMANDS must name,
    for every top-level command of the whole parser, the module that registers it."""
    from vstor.cli.main import COMMANDS, build_parser

    def top(parser) -> set[str]:
        return set(next(a for a in parser._actions if a.dest == "command").choices)

    assert set(COMMANDS) == top(build_parser())
    for name in COMMANDS:
        assert name in top(build_parser(name)), f"{COMMANDS[name]} does not register {name!r}"
    code = ("import sys, contextlib, vstor.cli.main as m\n"
            "with contextlib.suppress(SystemExit): m.main(['volume', 'list', '--help'])\n"
            "print(','.join(n for n in sys.modules if n.startswith('vstor.cli.')), file=sys.stderr)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    loaded = set(r.stderr.strip().split(","))
    assert "vstor.cli.volumes.volume_cmd" in loaded and "vstor.cli.backups.backup_cmd" not in loaded, sorted(loaded)


def test_daemon_start_does_not_import_pyroute2_or_x509():
    """pyroute2 (network namespaces of restore drills) took 0.64 -> 0.39 s of CPU off every daemon
    start once drillcheck imported it only when a drill needs a namespace; x509 (certificates are
    made by `vstor pki`, not the daemon) another ~30 ms."""
    code = "import sys, vstor.control.daemon; print(any(m in sys.modules for m in ('pyroute2', 'cryptography.x509')))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "False"
