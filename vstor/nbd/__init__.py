"""Remote attach over NBD: volumes and snapshot images served to test hosts, qemu and libnbd.

``proto`` (constants and message encoding), ``negotiate`` (the option state machine) and
``transmit`` (request rules, block status extents) are pure; ``exportfile`` persists the
pool's exports; ``catalog`` resolves them against the Store and applies the sharing rules;
``tlsdir`` finds the server's certificates; ``server`` accepts clients, bounded, and stops
them softly; ``serving`` (a subpackage) serves one client's requests once it is attached.
"""

from __future__ import annotations

__all__ = ["catalog", "exportfile", "negotiate", "proto", "server", "serving", "tlsdir", "transmit"]
