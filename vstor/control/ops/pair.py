"""Control operations for replication pairs (mixed into PoolService).

They need the daemon (the pair's threads live there), so offline they refuse with a
clear error. Membership, size and rollback changes of a paired group are refused here too:
both sites must keep the same volumes, and a secondary only changes through replication.
"""

from __future__ import annotations

from typing import Any

from vstor.errors import NotRunning
from vstor.store.store import Store


class PairOps:
    store: Store
    replication: Any

    def _repl(self) -> Any:
        if self.replication is None:
            raise NotRunning("pair commands need the running array: start it with 'vstor array start'")
        return self.replication

    def _guard_group(self, group_id: int, action: str) -> None:
        if self.replication is not None:
            self.replication.guard(group_id, action)

    def _guard_volume(self, name: str, action: str) -> None:
        vol = self.store.state.table.find(name)
        if vol is not None:
            self._guard_group(vol.group, action)

    def op_pair_create(self, group: str, peer: str, peer_name: str | None = None, peer_group: str | None = None,
                       secondary: bool = False, bandwidth: int = 0, compress: str = "none",
                       journal_limit: int = 1 << 30, suspend_after: float = 10.0) -> dict:
        return self._repl().create(group, peer, peer_name, peer_group, secondary, bandwidth, compress,
                                   journal_limit, suspend_after)

    def op_pair_status(self, group: str | None = None) -> list[dict]:
        return self._repl().status(group)

    def op_pair_split(self, group: str, mode: str = "flush") -> dict:
        return self._repl().split(group, mode)

    def op_pair_resync(self, group: str) -> dict:
        return self._repl().resync(group)

    def op_pair_takeover(self, group: str, force: bool = False) -> dict:
        return self._repl().takeover(group, force)

    def op_pair_failback(self, group: str) -> dict:
        return self._repl().failback(group)

    def op_pair_delete(self, group: str) -> dict:
        return self._repl().delete(group)
