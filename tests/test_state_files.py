"""The pool's state files on a local pool (vstor/store/backend/statefiles.py): every kind written
through the store's ``files`` is the file it always was (its path in the pool, mode 0600),
``is_state_file`` names exactly those (what a copy of the pool must put through its backend),
and a second store on the same pool reads them all back."""

from __future__ import annotations

import os
import stat

from poolkit import make_pool
from statekit import WRITTEN, check_state, files_under, write_state

from vstor.clock import ManualClock
from vstor.store.backend.local import LocalBackend
from vstor.store.backend.statefiles import PoolFiles, is_state_file, local_files
from vstor.store.store import Store


def test_every_state_file_is_a_private_file_of_the_pool_and_reads_back(tmp_path):
    pool, clock = make_pool(tmp_path), ManualClock()
    store = Store.open(pool, clock=clock)
    try:
        written = write_state(store, clock)
    finally:
        store.close()
    state = [f for f in files_under(pool) if is_state_file(f)]
    assert state == WRITTEN
    others = [f for f in files_under(pool) if not is_state_file(f)]
    assert all(f in ("pool.json", "lock") or f.startswith(("journal/", "meta/checkpoint.", "meta/superblock.", "log/"))
               for f in others), others
    for f in state:
        assert stat.S_IMODE(os.stat(os.path.join(pool, f)).st_mode) == 0o600, f
    again = Store.open(pool, clock=clock)
    try:
        check_state(again, clock, written)
    finally:
        again.close()


def test_pool_files_names_reads_and_removes(tmp_path):
    files = PoolFiles(LocalBackend(str(tmp_path))).sub("meta")
    assert files.read("x.json") is None and files.names() == []
    files.remove("gone/never.json")  # no directory, no file: nothing to do
    files.write("a.json", b"1")
    files.append("log", b"one\n")
    files.append("log", b"two\n")
    assert (tmp_path / "meta" / "log").read_bytes() == b"one\ntwo\n"
    assert files.names() == ["a.json", "log"] and files.names(".json") == ["a.json"]
    assert files.where("a.json") == os.path.join(str(tmp_path), "meta/a.json")
    os.chmod(tmp_path / "meta" / "a.json", 0o644)  # widened by someone: a private read narrows it
    assert files.read("a.json", private=True) == b"1"
    assert stat.S_IMODE(os.stat(tmp_path / "meta" / "a.json").st_mode) == 0o600
    files.remove("a.json")
    assert files.read("a.json") is None and local_files(str(tmp_path)).sub("meta").names() == ["log"]


def test_a_private_read_goes_through_the_backends_hook(tmp_path):
    """PoolFiles asks the backend (``get_private``), whatever its class: here one whose hook
    tells the secret's reads apart."""
    class Marked(LocalBackend):
        def get_private(self, name: str) -> bytes:
            return b"private:" + super().get_private(name)

    files = PoolFiles(Marked(str(tmp_path))).sub("backup")
    files.write("admins.json", b"{}")
    os.chmod(tmp_path / "backup" / "admins.json", 0o640)
    assert files.read("admins.json", private=True) == b"private:{}" and files.read("admins.json") == b"{}"
    assert stat.S_IMODE(os.stat(tmp_path / "backup" / "admins.json").st_mode) == 0o600
    assert files.read("none.json", private=True) is None
