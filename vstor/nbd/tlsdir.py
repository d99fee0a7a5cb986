"""The NBD server's TLS context from a certificate directory.

Two layouts are read, the first found wins:

* nbdkit/qemu/libnbd's: ``ca-cert.pem``, ``server-cert.pem``, ``server-key.pem``;
* ``vstor pki``'s: ``ca.pem`` and ``NAME.pem`` / ``NAME.key`` (``name``, or the only certificate
  there besides the CA).

Clients must present a certificate signed by the CA (mutual TLS); its common name is what
``volume export --allow`` names. TLS 1.2 is the floor, as the NBD protocol asks.
"""

from __future__ import annotations

import glob
import os
import ssl

from vstor.errors import NotFound, UsageError


def server_files(directory: str, name: str | None = None) -> tuple[str, str, str]:
    """(CA, certificate, key) paths in ``directory``."""
    d = directory
    if os.path.exists(os.path.join(d, "server-cert.pem")) and not name:
        return os.path.join(d, "ca-cert.pem"), os.path.join(d, "server-cert.pem"), os.path.join(d, "server-key.pem")
    if not os.path.exists(os.path.join(d, "ca.pem")):
        raise NotFound(f"no CA in {d} (ca.pem or ca-cert.pem); create one with 'vstor pki init {d}'")
    if not name:
        keys = glob.glob(os.path.join(d, "*.key"))
        names = sorted(os.path.basename(p)[:-4] for p in keys if os.path.basename(p) != "ca.key")
        if len(names) != 1:
            raise UsageError(f"{d} holds {len(names)} certificates ({', '.join(names) or 'none'}); name the array's "
                             "with --name, or issue one with 'vstor pki issue NAME --dir DIR'")
        name = names[0]
    return os.path.join(d, "ca.pem"), os.path.join(d, f"{name}.pem"), os.path.join(d, f"{name}.key")


def server_context(directory: str, name: str | None = None) -> ssl.SSLContext:
    ca, cert, key = server_files(directory, name)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.verify_mode = ssl.CERT_REQUIRED
    try:
        ctx.load_cert_chain(cert, key)
        ctx.load_verify_locations(ca)
    except FileNotFoundError as e:
        raise NotFound(f"missing TLS file {e.filename}; issue one with "
                       f"'vstor pki issue NAME --dir {directory}'") from None
    return ctx

