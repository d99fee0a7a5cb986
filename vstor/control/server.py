"""The daemon's control socket server: one thread per connection, requests run on
PoolService. Errors go back to the client as typed error replies; nothing a client sends
can raise out of the server. A request that asks for progress runs in a worker thread while
the connection's thread sends progress lines (protocol.py); a client that goes away does
not stop the operation. Every failed request is logged as one line (a bug's traceback at
debug level, see vstor/errlog.py)."""

from __future__ import annotations

import contextvars
import errno
import logging
import os
import socketserver
import sys
import threading
from collections.abc import Callable
from typing import Any

from vstor.backup.audit import ACTOR
from vstor.control.peer import peer_actor
from vstor.control.protocol import KEEPALIVE, MAX_LINE, decode_request, encode, error_reply
from vstor.control.service import PoolService
from vstor.errlog import describe, log_failure
from vstor.errors import UsageError, VstorError

# How often serve_forever looks for a shutdown request. socketserver's default, 0.5 s, made every
# daemon stop wait ~0.5 s: the 'array stop' request had just woken the loop, which then slept a
# whole interval before it saw stop()'s shutdown. 20 idle wake-ups a second cost nothing.
SHUTDOWN_POLL = 0.05

log = logging.getLogger("vstor.control")


class _Handler(socketserver.StreamRequestHandler):
    server: ControlServer

    def handle(self) -> None:
        ACTOR.set(peer_actor(self.request))  # this connection's thread: the audit log's acting user
        while True:
            line = self.rfile.readline(MAX_LINE + 1)
            if not line:
                return
            try:
                if len(line) > MAX_LINE:
                    raise UsageError("control request too long")
                op, args, progress = decode_request(line)
            except VstorError as e:
                log.info("control request refused: %s", describe(e))
                self.wfile.write(encode(error_reply(e)))
                if len(line) > MAX_LINE:
                    return
                continue
            reply = self._with_progress(op, args) if progress else self._run(op, args)
            try:
                self.wfile.write(encode(reply))
            except OSError as e:  # the client went away; its request has run
                log.info("control request %s: the client left before the reply (%s)", op, e.strerror or e)
                return

    def _run(self, op: str, args: dict, progress: Callable[[int, int], None] | None = None) -> dict:
        try:
            return {"ok": True, "result": self.server.service.dispatch(op, args, progress)}
        except VstorError as e:  # an I/O-class error is the array's failure, not the request's
            log.log(logging.ERROR if e.errno == errno.EIO else logging.INFO, "control request %s refused: %s",
                    op, describe(e))
            return error_reply(e)
        except TypeError as e:
            log.info("control request %s refused: bad arguments: %s", op, e)
            return error_reply(UsageError(f"bad arguments: {e}"))
        except Exception as e:  # a bug: report it, keep serving
            log_failure(log, f"control request {op} failed", e)
            return error_reply(VstorError(f"internal error: {describe(e)} (see the pool's log/daemon.log)"))

    def _with_progress(self, op: str, args: dict) -> dict:
        """Run the request in a worker thread; send its latest progress every KEEPALIVE seconds."""
        latest: dict = {}
        reply: dict = {}

        def report(done: int, total: int) -> None:
            latest.update(done=done, total=total)

        ctx = contextvars.copy_context()  # the acting user goes along
        worker = threading.Thread(target=lambda: reply.update(ctx.run(self._run, op, args, report)),
                                  name=f"vstor-control-{op}", daemon=True)
        worker.start()
        listening = True
        while not reply:
            worker.join(KEEPALIVE)
            if not reply and listening:
                try:
                    self.wfile.write(encode({"progress": dict(latest)}))
                except OSError:  # the client went away; the operation goes on
                    listening = False
        return reply


class ControlServer(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True

    def __init__(self, path: str, service: PoolService) -> None:
        self.service = service
        if os.path.exists(path):
            os.unlink(path)  # stale: we hold the pool lock, so no live daemon owns it
        old = os.umask(0o077)
        try:
            super().__init__(path, _Handler)
        finally:
            os.umask(old)
        os.chmod(path, 0o600)
        self.path = path
        self._thread = threading.Thread(target=self.serve_forever, args=(SHUTDOWN_POLL,), name="vstor-control",
                                        daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        """Stop serving (if started), close the socket and remove its path."""
        if self._thread.ident is not None:  # shutdown() waits for serve_forever, which must run
            self.shutdown()
            self._thread.join()
        self.server_close()
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass

    def handle_error(self, request: Any, client_address: Any) -> None:
        """An exception out of a handler (it catches its own): one line, not a traceback on stderr."""
        e = sys.exc_info()[1]
        if e is not None:
            log_failure(log, "control connection failed", e)
