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
