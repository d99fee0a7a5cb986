"""The daemon's control socket server: one thread per connection, requests run on
PoolService. Errors go back to the client as typed error replies; nothing a client sends
can raise out of the server."""

from __future__ import annotations

import logging
import os
import socketserver
import threading

from vstor.control.protocol import MAX_LINE, decode_request, encode, error_reply
from vstor.control.service import PoolService
from vstor.errors import UsageError, VstorError

log = logging.getLogger("vstor.control")


class _Handler(socketserver.StreamRequestHandler):
    server: ControlServer

    def handle(self) -> None:
        while True:
            line = self.rfile.readline(MAX_LINE + 1)
            if not line:
                return
            try:
                if len(line) > MAX_LINE:
                    raise UsageError("control request too long")
                op, args = decode_request(line)
                reply = {"ok": True, "result": self.server.service.dispatch(op, args)}
            except VstorError as e:
                reply = error_reply(e)
            except TypeError as e:
                reply = error_reply(UsageError(f"bad arguments: {e}"))
            except Exception as e:  # a bug: report it, keep serving
                log.exception("control request failed")
                reply = error_reply(VstorError(f"internal error: {e}"))
            self.wfile.write(encode(reply))
            if len(line) > MAX_LINE:
                return


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
        self._thread = threading.Thread(target=self.serve_forever, name="vstor-control", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self.shutdown()
        self.server_close()
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass
