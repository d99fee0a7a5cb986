"""Pair state of one consistency group, its transitions and the handshake verdict. Pure.

States follow reference §3 (Hitachi UR names): SIMPLEX, COPY, PAIR, PFUL, PSUS, PSUE,
RESYNC, SSWS, SPLIT_BRAIN. Each array persists its own view (registry.py) together with a
``generation`` that only grows and is bumped on every promote, and a ``history`` of
(generation, sequence number at which it began). Invariants:

* (b) the secondary's applied sequence number never decreases, except through an explicit
  resync, failback or rollback (which set it with a journaled ``seq_set`` event);
* (c) at most one side is writable per generation: a primary is demoted before its peer is
  promoted (planned), or the promoted side has the higher generation (forced), and two
  primaries meeting is SPLIT_BRAIN at both, never resolved without the operator.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from vstor.errors import Busy, UsageError

SIMPLEX, COPY, PAIR, PFUL, PSUS, PSUE, RESYNC, SSWS, SPLIT_BRAIN = (
    "SIMPLEX", "COPY", "PAIR", "PFUL", "PSUS", "PSUE", "RESYNC", "SSWS", "SPLIT_BRAIN")
PRIMARY, SECONDARY = "primary", "secondary"
SHIPPING = (COPY, PAIR, PFUL, RESYNC)  # the primary tries to connect and send
CONSISTENT = (PAIR, PFUL, PSUS, PSUE, SSWS)  # the secondary's data equals the primary's at some N

# (state, event) -> next state. Anything else is refused. Every change of a pair's state or role
# goes through Pair.transition (the registry saves the result).
SECONDARY_STATES = (COPY, PAIR, PFUL, PSUS, PSUE, RESYNC)  # where a secondary follows its primary from
TRANSITIONS: dict[tuple[str, str], str] = {
    (SIMPLEX, "create"): COPY,  # the primary: an initial copy of allocated data
    (SIMPLEX, "accept"): COPY,  # the secondary: the copy arrives
    (COPY, "synced"): PAIR, (RESYNC, "synced"): PAIR,
    (PAIR, "full"): PFUL, (PFUL, "relieved"): PAIR,
    (PAIR, "split"): PSUS, (PFUL, "split"): PSUS, (COPY, "split"): PSUS, (RESYNC, "split"): PSUS,
    **{(s, "error"): PSUE for s in (COPY, PAIR, PFUL, RESYNC, PSUS)},
    (PSUS, "resync"): RESYNC, (PSUE, "resync"): RESYNC, (SSWS, "resync"): RESYNC,
    (SPLIT_BRAIN, "resync"): RESYNC,
    **{(s, "takeover"): PAIR for s in (PAIR, PFUL)},  # planned swap: both stay paired, roles reversed
    **{(s, "force"): SSWS for s in (PAIR, PFUL, PSUS, PSUE)},
    **{(s, "split_brain"): SPLIT_BRAIN for s in (COPY, PAIR, PFUL, PSUS, PSUE, RESYNC, SSWS)},
    (PAIR, "demote"): PAIR,  # planned swap, at the primary: drained, it hands the role over
    # the primary (failback, split-brain resolution) is chosen as the victim: it becomes the secondary
    **{(s, "victim"): RESYNC for s in (COPY, PAIR, PFUL, PSUS, PSUE, RESYNC, SSWS, SPLIT_BRAIN)},
    # the secondary follows its primary: a copy or resync starts, or the primary split the pair
    **{(s, "follow_copy"): COPY for s in SECONDARY_STATES},
    **{(s, "follow_resync"): RESYNC for s in SECONDARY_STATES},
    **{(s, "peer_split"): PSUS for s in SECONDARY_STATES},
}

# event -> (the role it needs, None: any; the role after it). Events not listed keep the role.
ROLE_MOVES: dict[str, tuple[str | None, str]] = {
    "takeover": (SECONDARY, PRIMARY), "force": (SECONDARY, PRIMARY),  # promotions (Pair.promote)
    "demote": (PRIMARY, SECONDARY), "victim": (PRIMARY, SECONDARY),
    "resync": (None, PRIMARY),  # resync runs on the primary; out of SPLIT_BRAIN this array's data wins
}


@dataclass
class Pair:
    group: str  # the local group
    peer: str  # HOST:PORT of the peer's replication endpoint
    peer_name: str  # the identity (certificate common name) the peer must present
    peer_group: str  # the group's name at the peer
    role: str
    state: str = SIMPLEX
    generation: int = 1
    history: list[list[int]] = field(default_factory=lambda: [[1, 0]])
    bandwidth: int = 0  # bytes per second on the wire, 0: unlimited
    compress: str = "none"
    journal_limit: int = 1 << 30  # journal bytes the pair may hold back before PFUL/PSUE
    suspend_after: float = 10.0  # seconds without the peer before PAIR becomes PSUE
    consistent: bool = False  # secondary: volumes equal the primary's at some N
    synced_seq: int = -1  # secondary: consistent once it has applied this seq (-1: copy not complete)
    reason: str = ""  # why the pair is suspended or split-brained
    victim_peer: bool = False  # primary, resyncing: the peer's diverged data is replaced (it keeps a snapshot)
    swap_after: bool = False  # failback: swap roles back once the resync reaches PAIR
    created: float = 0.0

    def transition(self, event: str) -> str:
        """Move to the state (and role, ROLE_MOVES) that ``event`` leads to; Busy if it is not
        possible in this state or role (nothing changes then)."""
        nxt = TRANSITIONS.get((self.state, event))
        if nxt is None:
            raise Busy(f"pair {self.group} is {self.state}: '{event}' is not possible now" + _hint(self))
        need, role = ROLE_MOVES.get(event, (None, self.role))
        if need is not None and self.role != need:
            raise Busy(f"pair {self.group}: '{event}' is possible only on the {need}; this array is the "
                       f"{self.role}")
        self.state, self.role = nxt, role
        return nxt

    def promote(self, seq: int, event: str = "takeover") -> None:
        """Become the primary at group sequence number ``seq`` through ``event`` (takeover: planned,
        the state stays PAIR; force: SSWS): a new generation."""
        self.transition(event)
        self.generation = max(g for g, _ in self.history) + 1
        self.history.append([self.generation, seq])

    def as_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> Pair:
        return cls(**{k: v for k, v in d.items() if k in cls.__dataclass_fields__})


def _hint(p: Pair) -> str:
    return {
        PSUS: "; resume with 'vstor pair resync'",
        PSUE: f"; it is suspended ({p.reason or 'error'}): fix the cause, then 'vstor pair resync'",
        SPLIT_BRAIN: "; run 'vstor pair resync' on the array whose data must win (the other keeps its "
                     "diverged data in a snapshot), or 'vstor pair failback' on the taken-over side",
        COPY: "; wait for the initial copy to finish (see 'vstor pair status')",
        RESYNC: "; wait for the resync to finish (see 'vstor pair status')",
    }.get(p.state, "")


def require_role(p: Pair, role: str, command: str) -> None:
    if p.role != role:
        where = "the primary" if role == PRIMARY else "the secondary"
        raise UsageError(f"'vstor pair {command}' runs on {where}; this array is the {p.role} of "
                         f"pair {p.group} (peer {p.peer_name} at {p.peer})")


@dataclass(frozen=True)
class Verdict:
    action: str  # "accept", "refuse" or "split_brain"
    reason: str = ""


def judge(local: Pair | None, peer_name: str, hello: dict) -> Verdict:
    """The server's decision on a client's HELLO (the client is always a primary)."""
    group = hello.get("peer_group")
    if local is None:
        return Verdict("refuse", f"no pair for group {group!r} here; create it with 'vstor pair create "
                                 f"{group} --secondary --peer HOST:PORT --peer-name {peer_name}'")
    if peer_name != local.peer_name:
        return Verdict("refuse", f"group {group!r} is paired with {local.peer_name!r}, not with {peer_name!r}")
    if hello.get("peer_group") != local.group or hello.get("group_at_primary") != local.peer_group:
        return Verdict("refuse", f"group names do not match: the peer pairs {hello.get('group_at_primary')!r} "
                                 f"with {hello.get('peer_group')!r}, this array {local.peer_group!r} with "
                                 f"{local.group!r}")
    if hello.get("role") != PRIMARY:
        return Verdict("refuse", "only a primary may open a replication connection")
    gen = int(hello.get("generation", 0))
    victim = bool(hello.get("victim"))  # the operator chose this array's diverged data to be replaced
    if local.role == PRIMARY:
        if victim and (local.state == SPLIT_BRAIN or gen > local.generation):
            return Verdict("accept", "chosen as the victim: this array becomes the secondary")
        return Verdict("split_brain", f"both arrays are primary (generation {local.generation} here, "
                                      f"{gen} at {peer_name})")
    if gen < local.generation:
        return Verdict("refuse", f"stale primary: generation {gen} is older than this array's "
                                 f"{local.generation}; it was taken over")
    if local.state == PSUE and hello.get("state") in (PAIR, PFUL):
        # Suspended here (a write it could not apply, a bad frame) while the primary still ships:
        # the REFUSE that said so was lost with its connection. Say it again; only a resync (or a
        # new copy) resumes the pair.
        return Verdict("refuse", f"the secondary is suspended (PSUE): {local.reason or 'error'}; fix the cause "
                                 f"there, then run 'vstor pair resync {local.peer_group}' at the primary")
    return Verdict("accept")
