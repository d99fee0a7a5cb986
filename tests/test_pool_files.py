"""Owner-only pool files and the key-file warnings (vstor/control/poolfiles.py): modes after
``pool init`` and ``array start``, and one stderr line plus a daemon.log line per problem."""

from __future__ import annotations

import logging
import os
import stat
from pathlib import Path

import pytest
from harness import VSTOR, run

from vstor.control import poolfiles
from vstor.durable import atomic_write


def _mode(path: str | Path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def _key(path: Path, mode: int) -> str:
    path.write_bytes(os.urandom(64))
    path.chmod(mode)
    return str(path)


# -- in process ----------------------------------------------------------------------------------------
def test_key_file_warnings(tmp_path):
    pool = tmp_path / "pool"
    pool.mkdir()
    assert poolfiles.key_file_warnings(str(pool), _key(tmp_path / "ok.key", 0o600)) == []
    assert poolfiles.key_file_warnings(str(pool), None) == []
    assert poolfiles.key_file_warnings(str(pool), str(tmp_path / "missing.key")) == []
    for mode in (0o640, 0o604, 0o644):
        (w,) = poolfiles.key_file_warnings(str(pool), _key(tmp_path / "open.key", mode))
        assert f"readable by group or others (mode {mode:04o})" in w and "chmod 600" in w
    (pool / "sub").mkdir()
    (w,) = poolfiles.key_file_warnings(str(pool), _key(pool / "sub" / "in.key", 0o600))
    assert "inside the pool directory" in w
    os.symlink(pool, tmp_path / "link")  # the same directory under another name
    assert len(poolfiles.key_file_warnings(str(tmp_path / "link"), _key(pool / "both.key", 0o644))) == 2
    near = tmp_path / "pool2.key"  # a sibling whose name starts like the pool's: outside
    assert poolfiles.key_file_warnings(str(pool), _key(near, 0o600)) == []


def test_private_log_handler_dir_and_stale_tmp(tmp_path):
    log_dir = tmp_path / "pool" / "log"
    log_dir.mkdir(parents=True, mode=0o755)
    (log_dir / "daemon.log").write_text("from an older vstor\n")
    (log_dir / "daemon.log").chmod(0o644)
    h = poolfiles.pool_log_handler(str(tmp_path / "pool"))
    try:
        h.emit(logging.LogRecord("t", logging.INFO, __file__, 1, "hello", None, None))
    finally:
        h.close()
    assert _mode(log_dir) == 0o700 and _mode(log_dir / "daemon.log") == 0o600  # tightened
    assert (log_dir / "daemon.log").read_text().splitlines()[-1].endswith("t INFO hello")
    os.close(poolfiles.open_private(str(log_dir / "new.out")))
    assert _mode(log_dir / "new.out") == 0o600
    target = tmp_path / "f.json"
    Path(f"{target}.tmp").write_text("left by a crash")
    Path(f"{target}.tmp").chmod(0o666)
    atomic_write(str(target), b"{}")
    assert _mode(target) == 0o600 and target.read_bytes() == b"{}"


# -- through the CLI and a running array --------------------------------------------------------------
def _stderr_warnings(r) -> list[str]:
    return [ln for ln in r.stderr.splitlines() if ln.startswith("vstor: warning: ")]


@pytest.mark.root
def test_pool_init_and_array_start_make_owner_only_files(array_factory, tmp_path):
    key = str(tmp_path / "outside.key")  # created by pool init: 0600, outside the pool: no warning
    arr = array_factory(encrypt=True, key_file=key)
    arr.start()
    arr.vstor("volume", "create", "v", "--size", "8M")
    arr.stop()  # the final checkpoint writes meta
    pool = Path(arr.pool)
    assert _mode(key) == 0o600 and _mode(pool / "pool.json") == 0o600
    for d in ("journal", "meta", "log"):
        assert _mode(pool / d) == 0o700, d
    files = [p for d in ("meta", "log", "journal") for p in (pool / d).iterdir() if p.is_file()]
    assert {"daemon.log", "daemon.out"} <= {p.name for p in files} and any(p.parent.name == "meta" for p in files)
    for p in files:
        assert _mode(p) == 0o600, p
    assert _logged(pool) == []


@pytest.mark.root
def test_key_file_warnings_on_init_and_start(array_factory, tmp_path):
    key = _key(tmp_path / "shared.key", 0o644)
    r = run([VSTOR, "pool", "init", str(tmp_path / "p"), "--encrypt", "--key-file", key])
    (w,) = _stderr_warnings(r)  # one line, and the pool is made all the same
    assert "readable by group or others (mode 0644)" in w and "chmod 600" in w and "created pool" in r.stdout
    assert w.endswith(_logged(tmp_path / "p")[0].split(" WARNING ", 1)[1])
    # a key that pool init creates inside the pool: 0600, but a copy of the pool carries it
    arr = array_factory("q", encrypt=True, key_file=str(tmp_path / "q" / "pool" / "pool.key"))
    (logged,) = _logged(arr.pool)
    assert "inside the pool directory" in logged
    os.chmod(arr.key_file, 0o640)
    r = arr.start()
    warnings = _stderr_warnings(r)
    assert len(warnings) == 2 and "mode 0640" in warnings[0] and "inside the pool directory" in warnings[1]
    assert [ln.split(" WARNING ", 1)[1] for ln in _logged(arr.pool)[1:]] == [
        w[len("vstor: warning: "):] for w in warnings]
    arr.vstor("volume", "create", "v", "--size", "8M")  # warned, not refused


def _logged(pool: str | Path) -> list[str]:
    """The key-file warnings in ``POOL/log/daemon.log``."""
    return [ln for ln in (Path(pool) / "log" / "daemon.log").read_text().splitlines()
            if " vstor.keyfile WARNING " in ln]
