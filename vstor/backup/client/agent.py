"""The client's side: ``vstor client push`` and ``vstor client serve`` (the agent).

A push connects to the array, says HELLO (role "push"), gets WELCOME with the job and, for an
incremental, the base job's file list, sends the stream (FILE, DATA, FEND per file, DELETED,
END) and waits for the RESULT. The agent connects out and says HELLO (role "agent"), then waits
on that connection: a RUN frame from the array's schedule starts the same exchange as a push
(so both make the same kind of job), a RESTORE frame brings files back under a target.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import queue
import ssl
import threading
from collections.abc import Callable, Generator, Iterator
from typing import TypeVar

from vstor.backup.client import scan, wire
from vstor.backup.client.conn import Conn, Refused, connect
from vstor.backup.client.extract import Extractor
from vstor.backup.client.scan import zeros_into
from vstor.errors import CorruptData, NotRunning, VstorError
from vstor.faults import NO_FAULTS, Faults

log = logging.getLogger("vstor.client")
T = TypeVar("T")
DELETED_BATCH = 10000  # paths per DELETED frame
PREFETCH_AHEAD = 512  # entries the walking thread may be ahead of the sender
PREFETCH_MAX = 1 << 20  # files up to this size are read ahead (larger ones stream as they are sent)
READ_AHEAD = 4  # DATA_CHUNK pieces a large file is read ahead of its sending
JOIN_TIMEOUT = 30.0  # seconds to wait for a helper thread's last read when the sender stops early


def send_stream(conn: Conn, roots: list[str], base: list | None, check_content: bool = False) -> dict:
    """Send every entry under ``roots`` (only the changed ones when ``base`` is given), the
    deletions, and END. Returns the counts. With ``check_content`` a file whose type, size and
    mtime match the base is also hashed, and sent when its bytes differ."""
    index = scan.base_index(base) if base is not None else None
    sums = scan.base_sums(base) if check_content else {}
    seen: set[str] = set()
    files = data = 0
    for e in prefetched(scan.walk(roots)):
        seen.add(e["path"])
        if index is not None and not scan.changed(e, index) and not scan.content_differs(e, sums):
            continue
        if e["type"] == "file":
            data += _send_file(conn, e)
        else:
            conn.send(wire.FILE, wire.dumps(e))
        files += 1
    gone = sorted(p for p in index or {} if p not in seen)
    for i in range(0, len(gone), DELETED_BATCH):
        conn.send_json(wire.DELETED, {"paths": gone[i : i + DELETED_BATCH]})
    conn.send_json(wire.END, {"files": files, "bytes": data})
    return {"files": files, "bytes": data, "deleted": len(gone)}


def prefetched(entries: Iterator[dict], ahead: int = PREFETCH_AHEAD) -> Iterator[dict]:
    """``entries`` walked by a helper thread up to ``ahead`` entries in front of the sender,
    which also reads each small file once so that the sender finds it in the page cache: the
    disk's latency overlaps the hashing and sending instead of adding to them."""
    return in_thread(entries, ahead, _warm)


def _warm(e: dict) -> None:
    if e["type"] == "file" and 0 < e["size"] <= PREFETCH_MAX:
        with contextlib.suppress(OSError):
            fd = os.open(e["path"], os.O_RDONLY | os.O_NOFOLLOW)
            try:
                os.read(fd, e["size"])
            finally:
                os.close(fd)


def in_thread(items: Iterator[T], ahead: int, touch: Callable[[T], None] | None = None) -> Generator[T, None, None]:
    """``items`` produced by a helper thread at most ``ahead`` in front of the consumer (``touch``
    runs there on each); its exception is raised in the consumer; closing the iterator early
    releases the thread."""
    q: queue.Queue = queue.Queue(ahead)
    stop = threading.Event()
    end = object()

    def produce() -> None:
        try:
            for item in items:
                if stop.is_set():
                    return
                if touch is not None:
                    touch(item)
                q.put(item)
            q.put(end)
        except BaseException as x:  # noqa: BLE001 - handed to the consumer, which raises it
            q.put(x)

    t = threading.Thread(target=produce, name="vstor-client-ahead", daemon=True)
    t.start()
    try:
        while True:
            item = q.get()
            if item is end:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        with contextlib.suppress(queue.Empty):
            while True:
                q.get_nowait()  # let a blocked put return so the thread sees stop
        t.join(JOIN_TIMEOUT)


def _read(fd: int, ext: list[tuple[int, int]], path: str) -> Generator[tuple[int, bytes], None, None]:
    """(offset, chunk) of the file's extents, in DATA_CHUNK pieces."""
    for off, n in ext:
        pos, end = off, off + n
        while pos < end:
            chunk = os.pread(fd, min(wire.DATA_CHUNK, end - pos), pos)
            if not chunk:
                raise CorruptData(f"{path!r} shrank while it was sent: back it up again")
            yield pos, chunk
            pos += len(chunk)


def _send_file(conn: Conn, e: dict) -> int:
    fd, ext = scan.file_extents(e["path"], e["size"])
    try:
        e["extents"] = ext
        conn.send(wire.FILE, wire.dumps(e))
        h, pos = hashlib.sha256(), 0
        chunks = _read(fd, ext, e["path"])
        if e["size"] > PREFETCH_MAX:  # read the next pieces while this one is hashed and sent
            chunks = in_thread(chunks, READ_AHEAD)
        try:
            for off, chunk in chunks:
                pos = zeros_into(h, pos, off)
                h.update(chunk)
                conn.send(wire.DATA, chunk)
                pos += len(chunk)
        finally:
            chunks.close()  # the reading thread is done with the descriptor before it is closed
        zeros_into(h, pos, e["size"])
        conn.send_json(wire.FEND, {"sha256": h.hexdigest()})
        return sum(n for _o, n in ext)
    finally:
        os.close(fd)


def hello(name: str, role: str, roots: list[str], level: str | None, policy: str | None,
          key: bytes | None) -> dict:
    return {"version": wire.VERSION, "name": name, "role": role, "paths": [os.path.abspath(r) for r in roots],
            "level": level, "policy": policy, "key_id": wire.key_id(key) if key else None}


def backup(conn: Conn, doc: dict, roots: list[str], key: bytes | None, check_content: bool = False) -> dict:
    """The exchange after connecting: HELLO, WELCOME, the stream, RESULT."""
    conn.send_json(wire.HELLO, doc)
    _, welcome = conn.recv_json(wire.WELCOME)
    conn.key = key
    try:
        sent = send_stream(conn, roots, welcome.get("base") if welcome.get("level") == "incremental" else None,
                           check_content)
    except (BrokenPipeError, ConnectionResetError, ssl.SSLError) as e:  # the array may have refused and
        conn.key = None  # closed: say why if it did
        why = conn.refusal()
        if why is not None:
            raise why from e
        raise
    finally:
        conn.key = None
    _, result = conn.recv_json(wire.RESULT)
    return result | {"sent": sent}


def push(address: str, tls_dir: str, name: str, roots: list[str], level: str | None = None,
         policy: str | None = None, key: bytes | None = None, faults: Faults = NO_FAULTS,
         check_content: bool = False) -> dict:
    """One backup of ``roots`` pushed by the client. Refused/BadFrame/NotRunning on failure."""
    try:
        conn = connect(address, tls_dir, name, faults=faults)
    except ssl.SSLError as e:
        raise Refused(f"refused: the TLS handshake with {address} failed ({e.reason or e}); check the "
                      "certificates from 'vstor pki'", "credentials") from None
    except OSError as e:
        raise NotRunning(f"cannot reach the array at {address}: {e.strerror or e}") from None
    try:
        return backup(conn, hello(name, "push", roots, level, policy, key), roots, key, check_content)
    except ssl.SSLError as e:
        raise Refused(f"refused: the array did not accept this client's certificate ({e.reason or e})",
                      "credentials") from None
    except (ConnectionError, TimeoutError) as e:
        raise NotRunning(f"the connection to the array at {address} was lost: {e}") from None
    finally:
        conn.close()


class Agent:
    """``vstor client serve``: hold a connection to the array and do what it asks."""

    def __init__(self, address: str, tls_dir: str, name: str, roots: list[str], key: bytes | None = None,
                 faults: Faults = NO_FAULTS, check_content: bool = False) -> None:
        self.address, self.tls_dir, self.name, self.roots, self.key = address, tls_dir, name, roots, key
        self.check_content = check_content
        self.faults = faults
        self.stop = threading.Event()
        self.conn: Conn | None = None
        self.runs = 0

    def connect(self) -> Conn:
        conn = connect(self.address, self.tls_dir, self.name, faults=self.faults)
        try:
            conn.send_json(wire.HELLO, hello(self.name, "agent", self.roots, None, None, self.key))
            conn.recv_json(wire.WELCOME)
        except BaseException:
            conn.close()
            raise
        conn.sock.settimeout(None)  # idle until the array asks; the array ends it by closing
        self.conn = conn
        return conn

    def serve_once(self, conn: Conn) -> bool:
        """Answer one request; False when the connection ended."""
        try:
            ftype, body = conn.recv()
        except (OSError, wire.BadFrame):
            return False
        if ftype == wire.PING:
            return True
        doc = wire.loads(body)
        if ftype == wire.RUN:
            roots = self.roots or [str(p) for p in doc.get("paths") or []]
            try:
                r = backup(conn, hello(self.name, "push", roots, doc.get("level"), doc.get("policy"), self.key),
                           roots, self.key, self.check_content)
                log.info("backup job %s: %s", r.get("job"), r.get("status"))
            except Refused as e:
                log.error("backup refused by the array: %s", e)
            except (OSError, VstorError) as e:
                log.error("backup failed: %s", e)
                return False
            self.runs += 1
            return True
        if ftype == wire.RESTORE:
            return self._restore(conn, doc)
        return False

    def _restore(self, conn: Conn, doc: dict) -> bool:
        conn.key = self.key
        try:
            ext = Extractor(doc["target"])
            while True:
                ftype, body = conn.recv()
                if ftype == wire.END:
                    break
                if ftype != wire.FILE:
                    raise wire.BadFrame(f"{wire.NAMES[ftype]} frame in a restore stream")
                e = wire.loads(body)
                ext.entry(e, _data_frames(conn, e) if e["type"] == "file" else ())
            result = {"status": "done", **ext.finish()}
        except (OSError, VstorError) as e:
            result = {"status": "failed", "reason": str(e)}
        finally:
            conn.key = None
        conn.send_json(wire.RESULT, result)
        return True

    def serve(self) -> None:
        """Connect and serve until :meth:`close`, reconnecting after a lost connection."""
        delay = 0.5
        while not self.stop.is_set():
            try:
                conn = self.connect()
            except (OSError, VstorError) as e:
                log.warning("cannot reach the array at %s: %s; retrying in %.1fs", self.address, e, delay)
                self.stop.wait(delay)
                delay = min(30.0, delay * 2)
                continue
            delay = 0.5
            while not self.stop.is_set() and self.serve_once(conn):
                pass
            conn.close()

    def close(self) -> None:
        self.stop.set()
        if self.conn is not None:
            self.conn.close()


def _data_frames(conn: Conn, e: dict):  # noqa: ANN202 - a generator of the file's data pieces
    need = sum(n for _o, n in e["extents"])
    while need > 0:
        ftype, chunk = conn.recv()
        if ftype != wire.DATA:
            raise wire.BadFrame(f"{wire.NAMES[ftype]} frame where the data of {e['path']!r} was due")
        need -= len(chunk)
        yield chunk
    ftype, _ = conn.recv()
    if ftype != wire.FEND:
        raise wire.BadFrame(f"{wire.NAMES[ftype]} frame where the end of {e['path']!r} was due")
