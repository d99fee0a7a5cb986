"""The HELLO: the primary's opening (the TLS connect and the HELLO it sends) and the check of
a received one, so that no field of a peer's HELLO is trusted before its type is known.

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


# Field -> type of the HELLO fields the secondary needs, then of those it can do without
# (bool is not an int here, although Python says it is).
HELLO_FIELDS: dict[str, type] = {"peer_group": str, "group_at_primary": str, "role": str, "generation": int,
                                 "key_check": str, "volumes": list}
HELLO_OPTIONAL: dict[str, type] = {"history": list, "state": str, "array": str, "victim": bool, "probe": bool}
VOLUME_FIELDS: dict[str, type] = {"id": int, "name": str, "size": int}


def check_hello(msg: dict) -> str:
    """What is wrong with a received HELLO, in a few words; "" when every field has its type."""
    problems = [_wrong(msg, HELLO_FIELDS, ""), _wrong(msg, HELLO_OPTIONAL, "", optional=True)]
    if not any(problems):
        if msg["generation"] < 0:
            problems.append("generation must not be negative")
        if not all(isinstance(h, list) and len(h) == 2 and all(_is(x, int) for x in h) for h in msg.get("history", [])):
            problems.append("history must be a list of [generation, seq] pairs")
        for i, v in enumerate(msg["volumes"]):
            problems.append(_wrong(v, VOLUME_FIELDS, f"volumes[{i}].") if isinstance(v, dict)
                            else f"volumes[{i}] must be an object")
    return "; ".join(p for p in problems if p)


def _wrong(obj: dict, fields: dict[str, type], prefix: str, optional: bool = False) -> str:
    missing = [] if optional else [prefix + k for k in fields if k not in obj]
    if missing:
        return "missing " + ", ".join(missing)
    bad = [f"{prefix}{k} must be {_TYPE_WORDS[t]}, not {obj[k]!r}"[:120] for k, t in fields.items()
           if k in obj and not _is(obj[k], t)]
    return "; ".join(bad)


def _is(value: Any, t: type) -> bool:
    return isinstance(value, t) and not (t is int and isinstance(value, bool))


_TYPE_WORDS = {str: "a string", int: "an integer", list: "a list", bool: "a boolean"}


def open_conn(mgr: Any, pair: Pair) -> transport.Conn:
    """A connection to the pair's peer through the manager's ``dial`` (TLS in a daemon)."""
    conn = mgr.dial(pair, faults=mgr.faults, rate=pair.bandwidth, compress=pair.compress == "lz4")
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
