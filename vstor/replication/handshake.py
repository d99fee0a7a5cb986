"""Opening a replication connection as the primary: the TLS connect and the HELLO we send.

``probe`` asks the peer whether it would accept the pair, changing nothing at either end,
so that ``pair create`` can fail with the peer's reason instead of a later PSUE.
"""

from __future__ import annotations

import ssl
from typing import Any

from vstor.errors import VstorError
from vstor.replication import transport, wire
from vstor.replication.pairstate import PRIMARY, Pair


class PeerRefused(VstorError):
    """The peer refused the pair (authorization, keys, state); retrying will not help."""


def hello(mgr: Any, pair: Pair, **extra: Any) -> dict:
    return {"peer_group": pair.peer_group, "group_at_primary": pair.group,
            "role": PRIMARY, "generation": pair.generation, "history": pair.history, "state": pair.state,
            "key_check": mgr.store.key_check, "volumes": mgr.members(pair), "array": mgr.name,
            "victim": pair.victim_peer, **extra}


def open_conn(mgr: Any, pair: Pair) -> transport.Conn:
    tls_dir, name = mgr.check_tls()
    conn = transport.connect(pair.peer, tls_dir, name, faults=mgr.faults, rate=pair.bandwidth,
                             compress=pair.compress == "lz4")
    if conn.peer_name != pair.peer_name:
        conn.close()
        raise PeerRefused(f"{pair.peer} presented certificate {conn.peer_name!r}, not {pair.peer_name!r}")
    return conn


def probe(mgr: Any, pair: Pair) -> dict:
    """Ask the peer whether it accepts this pair, without changing anything at either end."""
    try:
        conn = open_conn(mgr, pair)
    except (OSError, ssl.SSLError) as e:
        raise PeerRefused(f"cannot reach the peer {pair.peer_name} at {pair.peer}: {e}") from None
    try:
        conn.send_json(wire.HELLO, hello(mgr, pair, probe=True))
        ftype, body = conn.recv()
    except (OSError, ssl.SSLError, wire.BadFrame) as e:
        raise PeerRefused(f"the peer {pair.peer_name} at {pair.peer} did not answer: {e}") from None
    finally:
        conn.close()
    answer = wire.parse_json(body)
    if ftype != wire.WELCOME:
        raise PeerRefused(f"the peer {pair.peer_name} refused pair {pair.group}: {answer.get('reason')}")
    return answer
