"""Every kind of pool state file, written through one open store and read back through another
(tests/test_state_files.py on a local pool, tests/test_rados_state.py across two "hosts" of a
RADOS pool): consumer positions, a pair and its bitmap, an NBD export, an admin, a compliance
lock, backup key ids, the audit log, a library with a medium on its shelf, a backup client's
key, an engine setting and the last check."""

from __future__ import annotations

import os
from dataclasses import dataclass

import pyotp

from vstor.backup.audit import AuditLog
from vstor.backup.governance.admins import AdminStore
from vstor.backup.keys import BackupKeys
from vstor.clock import ManualClock
from vstor.control.ops.status import last_check, record_check
from vstor.media.manager import MediaManager, media_files
from vstor.nbd.catalog import ExportCatalog
from vstor.nbd.exportfile import ExportSpec
from vstor.replication.bitmap import GRANULE, DirtyBitmap
from vstor.replication.pairstate import Pair
from vstor.replication.registry import Registry
from vstor.store.catalog import compliance
from vstor.store.store import Store

ROOT = bytes(range(32))
DAY = 86400.0
CLIENT_KEY = bytes(range(100, 132))
# The state files written_state makes, as named in the pool (vstor/store/backend/statefiles.py).
WRITTEN = ["backup/admins.json", "backup/audit.log", "backup/clients/c1.key", "backup/keys.json",
           "backup/settings.json", "media/lib.json", "media/lib/shelf/VT0001L9.json",
           "meta/compliance-clock.json", "meta/consumers.json", "meta/consumers.json.copy",
           "meta/last_check.json", "meta/locks.json", "meta/nbd_exports.json", "meta/pairs/g.bitmap",
           "meta/pairs/g.json"]


@dataclass
class Written:
    spec: ExportSpec
    bits: bytes
    secret: str
    first_audit: dict


def write_state(store: Store, clock: ManualClock) -> Written:
    """Write one of every state file through ``store.files`` (the modules the daemon uses)."""
    files = store.files
    store.consumers.register("repl", (1, 64))
    store.consumers.commit("repl", (1, 4096))
    reg = Registry(files.sub("meta"))
    reg.save(Pair("g", "127.0.0.1:7450", "site-b", "g", "primary"))
    maps = {1: DirtyBitmap(64 * GRANULE)}
    maps[1].mark(3 * GRANULE, 5 * GRANULE)
    reg.save_bitmap("g", maps)
    spec = ExportSpec("e1", "v", None, True, ("client-a",), False)
    ExportCatalog(store).put(spec)
    backup = files.sub("backup")
    secret = AdminStore(backup, clock).enroll("alice", "root")["secret"]
    cc, locks = compliance.for_pool(files, clock)
    locks.set("job:7", clock.time() + 30 * DAY, cc.now(), "alice", "backup job 7")
    assert BackupKeys(backup, ROOT, clock).rotate() == 1
    first = AuditLog(backup, clock).append("alice", "key.rotate", {"key_id": 1})
    backup.write("settings.json", b'{"key_rotate_every": 86400}')  # BackupEngine.set_setting's form
    backup.sub("clients").write("c1.key", CLIENT_KEY)  # ClientService.register's
    media = MediaManager(store.pool, files=media_files(store.pool, store.backend), state=files)
    media.create_library("lib", "tape", 4, 1, 1)
    media.create_media("lib", ["VT0001L9", "VT0002L9"])
    media.export("lib", "VT0001L9")
    media.import_("lib", "open")  # VT0001L9 leaves through the mail slot: its record on the shelf
    record_check(files, {"clean": True, "problems": [], "repairs": [], "bytes_verified": 4096})
    return Written(spec, bytes(maps[1].bits), secret, first)


def check_state(store: Store, clock: ManualClock, w: Written) -> None:
    """Everything write_state wrote, read back through another store's files."""
    files = store.files
    assert store.consumers.positions() == {"repl": (1, 4096)}
    reg = Registry(files.sub("meta"))
    assert reg.load_all()["g"].peer_name == "site-b"
    assert {v: bytes(m.bits) for v, m in reg.load_bitmap("g").items()} == {1: w.bits}
    assert ExportCatalog(store).specs() == [w.spec]
    backup = files.sub("backup")
    admins = AdminStore(backup, clock)
    assert admins.names() == ["alice"]
    admins.verify("alice", pyotp.TOTP(w.secret).at(clock.time()))  # the secret enrolled through the other store
    cc, locks = compliance.for_pool(files, clock)
    assert locks.until("job:7") == clock.time() + 30 * DAY
    assert [k["id"] for k in BackupKeys(backup, ROOT, clock).listing()] == [1]
    audit = AuditLog(backup, clock)
    assert audit.entries() == [w.first_audit]
    assert audit.append("bob", "key.rotate", {"key_id": 2})["prev"] == w.first_audit["hash"]  # the chain goes on
    assert audit.verify(anchor=w.first_audit["hash"]) == [] and len(audit.entries()) == 2
    assert backup.read("settings.json") == b'{"key_rotate_every": 86400}'
    assert backup.sub("clients").read("c1.key") == CLIENT_KEY
    media = MediaManager(store.pool, files=media_files(store.pool, store.backend), state=files)
    assert list(media.libs) == ["lib"] and "VT0001L9" not in media.libs["lib"].media
    assert list(media._shelf("lib")) == ["VT0001L9"]
    assert last_check(files)["bytes_verified"] == 4096


def files_under(directory: str) -> list[str]:
    """Every regular file under ``directory``, relative, with "/"."""
    return sorted(os.path.relpath(os.path.join(d, f), directory) for d, _s, fs in os.walk(directory) for f in fs)
