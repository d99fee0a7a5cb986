"""Snapshot costs: creation latency, write pause, I/O, listing, check and start-up with many snapshots.

    .venv/bin/python -m tools.bench_snapshots [--quick] [--parts 1,2,3,4] [--dir DIR] [--json-out FILE]

Part 1 (in-process, Store API, no FUSE): snapshots.create() end to end and the store-lock hold
  (stats snapshot_pause_us) against volume size (1 GiB .. 1 TiB, one member) and member count
  (1, 4, 16 members of 1 GiB, and 16 x 1 TiB). Every volume is "touched": one 4 KiB write per
  512 MiB, i.e. one map leaf per 512 MiB, the worst case (a snapshot copies one pointer per leaf).
Part 2 (real array): fio 4 KiB random writes, psync QD1 direct=1, on a prefilled 1 GiB volume of
  a group: without snapshots, with `vstor volume list` every 0.5 s (control: the same CLI process
  start-ups, no snapshot), and while `vstor snapshot create G` runs every 0.5 s; fio's
  completion-latency percentiles, and the daemon's snapshot_pause_us from DIR/stats.json.
Part 3 (real array): a 1 GiB volume filled with 1 MiB writes, then aged by 4 KiB random writes
  (2 x the job runtime, so that fragmentation is not what differs), and a control volume of the
  same pool in no group, filled and aged alike; with 0, 100 and 1000 snapshots (64 KiB of random
  4 KiB overwrites before each, so the leaves diverge), fio 4 KiB randread and randwrite at QD1 on
  both volumes (each run --io-repeats times, alternated; the median counts), their ratio to the
  0-snapshot run and to the control volume's at the same count, and the time of
  `vstor snapshot list G --json`.
Part 4: after part 3, `vstor array stop`, `vstor pool check` and `vstor array start` timed, and
  the daemon's VmRSS with all those snapshots.

--quick: sizes up to 16 GiB, 10 s fio (5 s per part-3 job), 0/20/100 snapshots. Needs root
(FUSE mounts). Everything lives in a temporary directory under --dir, removed at the end; every
array is stopped and every mount undone, also on error or Ctrl-C.

A daemon that stops answering (a fio job or a snapshot not done --stall-timeout seconds late) is
reported as STALLED with what its busy threads were doing (py-spy dump), then killed; part 3 ends
there and part 4 measures check and start-up with the snapshots taken so far. This process never
holds a FUSE file open itself (fio, cat and a child process do the I/O), so it cannot hang with it.
"""

from __future__ import annotations

__all__ = ["array", "common", "main", "part1", "part2", "part3", "part4"]
