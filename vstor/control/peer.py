"""Who is on the other end of the control socket: the acting user the audit log records.

The socket is mode 0600, so every peer is the pool's owner (root); what tells admins apart
is the user sudo ran the command for, which the kernel does not know. So: the peer's uid and
pid from SO_PEERCRED (the kernel's word, not the client's), then SUDO_USER from that pid's
environment when it has one, else the uid's name.
"""

from __future__ import annotations

import pwd
import socket
import struct

_CRED = struct.Struct("3i")  # struct ucred: pid, uid, gid


def peer_actor(sock: socket.socket) -> str | None:
    """The acting user of the process at the other end of a Unix socket, or None if unknown."""
    try:
        pid, uid, _gid = _CRED.unpack(sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _CRED.size))
    except (OSError, AttributeError):
        return None
    try:
        with open(f"/proc/{pid}/environ", "rb") as f:
            for item in f.read().split(b"\0"):
                if item.startswith(b"SUDO_USER=") and len(item) > 10:
                    return item[10:].decode(errors="replace")
    except OSError:
        pass
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)
