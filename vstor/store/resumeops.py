"""Resuming a store whose journal an outage of its remote backend suspended (a mixin of Store).

While a RADOS cluster does not answer (or is full), the journal is suspended (journal/outage.py):
host writes and syncs fail at once, reads fail within the client timeout. The records written
since the last successful sync are in an unknown state: some writes may have reached the OSDs,
some may still reach them after the client gave up (a late write), some never will. The host
was never told they are durable (its fsync failed). :meth:`ResumeOpsMixin.resume_after_outage`,
called by the daemon's OutageWatch once the backend takes a probe write, therefore:

1. waits for reads in progress, then, holding the checkpoint, remap and store locks, has the
   journal abandon its writes in flight and move its tail back to the last durable position
   (``Journal.cut_to_durable``);
2. rebuilds the pool state from the newest checkpoint and the journal up to there, exactly as
   a restart would: the maps then point only at durable records;
3. has the journal continue in a new segment whose header seals the old one at that position
   (``Journal.resume``), and only then adopts the rebuilt state. A failure in 2 or 3 (the
   cluster fails again) leaves the journal suspended and the old state in place.

The writes that were not durable are dropped, as a crash would drop them, but the daemon and
the FUSE mount stay up. docs/architecture.md ("Faults on RADOS") gives the argument.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING

from vstor.store.journal.hcache import HeaderCache
from vstor.store.journal.segscan import ScanEnd
from vstor.store.recovery import load_state, replay
from vstor.store.storeparts import StoreParts

__all__ = ["ResumeOpsMixin"]

log = logging.getLogger("vstor.store")


class ResumeOpsMixin(StoreParts):
    last_resume: dict | None = None  # what the last resume did (array status)
    # Resumes that dropped writes, counted like the kernel's errseq_t: each open image and NBD
    # connection remembers the count it has seen, and its next fsync or FLUSH fails once (EIO)
    # when the count has moved, so no writer believes data the resume dropped is durable.
    drops: int = 0

    def resume_after_outage(self) -> dict | None:
        """Resume a suspended journal if the backend takes a probe write now. Returns what was
        done, or None when the journal is not suspended. Raises OSError (or a VstorError) while
        the backend still fails: the journal stays suspended, and a later call tries again."""
        journal = self.journal
        if journal.outage is None or journal.failed:
            return None
        self.backend.probe()
        t0 = time.monotonic()
        with self._ckpt_lock, self._remap_lock, self._lock:
            outage = journal.outage
            if outage is None or journal.failed:
                return None
            self.wait_for_reads()  # each ends within the client timeout
            old, durable = journal.current_segno, journal.durable_position()
            dropped = journal.cut_to_durable()
            # The state as a restart would find it, the live segment read up to the durable
            # position; adopted only once the sealing segment exists. A failure here leaves the
            # journal suspended and the state as it was: the next attempt starts over.
            loaded = load_state(journal, self.backend, self.sb)
            end = ScanEnd(*loaded.start)
            records, nbytes = replay(loaded.state, journal, loaded.start, end)
            new = journal.resume()
            self.state = loaded.state
            self.adopt_checkpoint(loaded.generation, loaded.start, loaded.older, loaded.both_copies)
            self._hcache = HeaderCache()
        report = {"outage": outage.describe(), "sealed_segment": old, "sealed_at": durable[1] if durable[0] == old
                  else None, "new_segment": new, "dropped_bytes": dropped, "replayed_records": records,
                  "replayed_bytes": nbytes, "seconds": round(time.monotonic() - t0, 3)}
        self.last_resume = report
        if dropped:
            self.drops += 1
        log.warning("the pool's storage answers again after %.1f s (%s): journal resumed in segment %d, segment %d "
                    "sealed at %s; %d bytes written since the last sync were dropped (never acknowledged)",
                    time.time() - outage.since, outage.kind, new, old, report["sealed_at"], dropped)
        return report

    if TYPE_CHECKING:  # provided by the Store's core (store.py)
        def adopt_checkpoint(self, generation: int, position: tuple[int, int], older: tuple[int, int],
                             both: bool) -> None: ...
