"""Write+sync workload on a Store whose backend is RADOS; run as a separate process and
killed with SIGKILL by tests/test_rados_crash.py.

Writes version v of slot s (crash_workload.payload) to volume "v" (made if missing), calls
Store.sync every --sync-every writes, and logs "A s v" before each write and "K s v" once a
sync after it returned. Runs until killed.
"""

from __future__ import annotations

import argparse
import random

from crash_workload import payload, slot_size

from vstor.errors import NotFound
from vstor.store.backend.location import open_backend
from vstor.store.store import Store


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("location")
    p.add_argument("conf")
    p.add_argument("state")
    p.add_argument("log")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--slots", type=int, default=48)
    p.add_argument("--slot-bytes", type=int, default=256 * 1024)
    p.add_argument("--sync-every", type=int, default=1)
    a = p.parse_args()
    versions: dict[int, int] = {}
    with open(a.log, "a+", buffering=1) as log:
        log.seek(0)
        for line in log:  # resume versions from earlier runs
            _kind, s, v = line.split()
            versions[int(s)] = max(versions.get(int(s), 0), int(v))
        store = Store.open(a.state, backend=open_backend(a.location, a.conf, timeout=3))
        try:
            vid = store.volume("v").id
        except NotFound:
            vid = store.create_volume("v", a.slots * a.slot_bytes).id
        rnd = random.Random()
        pending: list[tuple[int, int]] = []
        while True:
            s = rnd.randrange(a.slots)
            v = versions.get(s, 0) + 1
            versions[s] = v
            log.write(f"A {s} {v}\n")
            store.write(vid, s * a.slot_bytes, payload(a.seed, s, v, slot_size(a.seed, s, a.slot_bytes)))
            pending.append((s, v))
            if len(pending) >= a.sync_every:
                store.sync()
                for ps, pv in pending:
                    log.write(f"K {ps} {pv}\n")
                pending.clear()


if __name__ == "__main__":
    main()
