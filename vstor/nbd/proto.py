"""NBD wire constants and the encoding of every message vstor sends or parses. Pure: no sockets.

The numbers are those of the upstream protocol document (NetworkBlockDevice/nbd, doc/proto.md);
docs/formats.md lists the subset vstor speaks. All integers are big-endian.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

# -- handshake ------------------------------------------------------------------------------
NBDMAGIC = 0x4E42444D41474943  # "NBDMAGIC"
IHAVEOPT = 0x49484156454F5054  # "IHAVEOPT": newstyle, and the magic of every option request
OPT_REPLY_MAGIC = 0x0003E889045565A9
FLAG_FIXED_NEWSTYLE, FLAG_NO_ZEROES = 1 << 0, 1 << 1  # handshake flags (server) = client flags
HANDSHAKE_FLAGS = FLAG_FIXED_NEWSTYLE | FLAG_NO_ZEROES

# -- options ---------------------------------------------------------------------------------
OPT_EXPORT_NAME, OPT_ABORT, OPT_LIST, OPT_STARTTLS = 1, 2, 3, 5
OPT_INFO, OPT_GO, OPT_STRUCTURED_REPLY = 6, 7, 8
OPT_LIST_META_CONTEXT, OPT_SET_META_CONTEXT, OPT_EXTENDED_HEADERS = 9, 10, 11

REP_ACK, REP_SERVER, REP_INFO, REP_META_CONTEXT = 1, 2, 3, 4
REP_FLAG_ERROR = 1 << 31
REP_ERR_UNSUP = REP_FLAG_ERROR | 1
REP_ERR_POLICY = REP_FLAG_ERROR | 2
REP_ERR_INVALID = REP_FLAG_ERROR | 3
REP_ERR_PLATFORM = REP_FLAG_ERROR | 4
REP_ERR_TLS_REQD = REP_FLAG_ERROR | 5
REP_ERR_UNKNOWN = REP_FLAG_ERROR | 6
REP_ERR_SHUTDOWN = REP_FLAG_ERROR | 7
REP_ERR_BLOCK_SIZE_REQD = REP_FLAG_ERROR | 8
REP_ERR_TOO_BIG = REP_FLAG_ERROR | 9

INFO_EXPORT, INFO_NAME, INFO_DESCRIPTION, INFO_BLOCK_SIZE = 0, 1, 2, 3

# -- transmission flags (u16, INFO_EXPORT and the EXPORT_NAME reply) ----------------------------
TF_HAS_FLAGS, TF_READ_ONLY, TF_SEND_FLUSH, TF_SEND_FUA = 1 << 0, 1 << 1, 1 << 2, 1 << 3
TF_ROTATIONAL, TF_SEND_TRIM, TF_SEND_WRITE_ZEROES, TF_SEND_DF = 1 << 4, 1 << 5, 1 << 6, 1 << 7
TF_CAN_MULTI_CONN, TF_SEND_RESIZE, TF_SEND_CACHE, TF_SEND_FAST_ZERO = 1 << 8, 1 << 9, 1 << 10, 1 << 11

# -- requests --------------------------------------------------------------------------------
REQUEST_MAGIC = 0x25609513
CMD_READ, CMD_WRITE, CMD_DISC, CMD_FLUSH, CMD_TRIM, CMD_CACHE, CMD_WRITE_ZEROES, CMD_BLOCK_STATUS = range(8)
CMD_NAMES = ("read", "write", "disc", "flush", "trim", "cache", "write_zeroes", "block_status")
CMDF_FUA, CMDF_NO_HOLE, CMDF_DF, CMDF_REQ_ONE, CMDF_FAST_ZERO = 1 << 0, 1 << 1, 1 << 2, 1 << 3, 1 << 4

# -- replies ---------------------------------------------------------------------------------
SIMPLE_REPLY_MAGIC = 0x67446698
STRUCTURED_REPLY_MAGIC = 0x668E33EF
REPLY_FLAG_DONE = 1 << 0
REPLY_NONE, REPLY_OFFSET_DATA, REPLY_OFFSET_HOLE, REPLY_BLOCK_STATUS = 0, 1, 2, 5
REPLY_ERROR, REPLY_ERROR_OFFSET = 0x8001, 0x8002

STATE_HOLE, STATE_ZERO = 1 << 0, 1 << 1  # base:allocation extent flags
BASE_ALLOCATION = "base:allocation"

# -- errors (the protocol's own numbers, equal to Linux errno) ----------------------------------
EPERM, EIO, ENOMEM, EINVAL, ENOSPC, EOVERFLOW, ENOTSUP, ESHUTDOWN = 1, 5, 12, 22, 28, 75, 95, 108
WIRE_ERRORS = frozenset({EPERM, EIO, ENOMEM, EINVAL, ENOSPC, EOVERFLOW, ENOTSUP, ESHUTDOWN})

DEFAULT_PORT = 10809

# -- vstor's limits --------------------------------------------------------------------------
MAX_OPTIONS = 32  # options per connection before the server gives up on it
MAX_OPTION_DATA = 64 << 10  # bytes of one option's data (names are <= 4 KiB; 16 queries of 4 KiB)
MAX_STRING = 4096  # export names and meta context queries
MIN_BLOCK, PREFERRED_BLOCK, MAX_PAYLOAD = 1, 4096, 32 << 20  # block size constraints advertised
MAX_EXTENTS = 1 << 16  # BLOCK_STATUS extents per reply (the protocol allows 2^20)

_HELLO = struct.Struct(">QQH")
_OPT_HEADER = struct.Struct(">QII")
_OPT_REPLY = struct.Struct(">QIII")
REQUEST = struct.Struct(">IHHQQI")  # magic, flags, type, cookie, offset, length
SIMPLE_REPLY = struct.Struct(">IIQ")  # magic, error, cookie
STRUCTURED_HEADER = struct.Struct(">IHHQI")  # magic, flags, type, cookie, length
_U16, _U32, _U64 = struct.Struct(">H"), struct.Struct(">I"), struct.Struct(">Q")


class ProtocolError(Exception):
    """The peer broke the protocol in a way that ends the connection (bad magic, oversize data)."""


def wire_errno(err: int) -> int:
    """An errno as the protocol carries it: the values it names pass; EDQUOT and EFBIG become
    ENOSPC, EROFS EPERM, everything else EIO."""
    if err in WIRE_ERRORS:
        return err
    return {122: ENOSPC, 27: ENOSPC, 30: EPERM, 38: EINVAL}.get(err, EIO)


def hello() -> bytes:
    """The server's first 18 bytes: NBDMAGIC, IHAVEOPT, handshake flags."""
    return _HELLO.pack(NBDMAGIC, IHAVEOPT, HANDSHAKE_FLAGS)


def parse_client_flags(data: bytes) -> int:
    """The client's u32 flags; unknown bits (or no FIXED_NEWSTYLE) end the connection."""
    (flags,) = _U32.unpack(data)
    if flags & ~HANDSHAKE_FLAGS:
        raise ProtocolError(f"unknown client flags {flags:#x}")
    if not flags & FLAG_FIXED_NEWSTYLE:
        raise ProtocolError("the client does not speak fixed newstyle")
    return flags


OPT_HEADER_SIZE = _OPT_HEADER.size


def parse_option_header(data: bytes) -> tuple[int, int]:
    """(option, data length) of a 16-byte option header."""
    magic, opt, length = _OPT_HEADER.unpack(data)
    if magic != IHAVEOPT:
        raise ProtocolError(f"bad option magic {magic:#x}")
    return opt, length


def option_request(opt: int, data: bytes = b"") -> bytes:
    """An option as a client sends it (tests and tools)."""
    return _OPT_HEADER.pack(IHAVEOPT, opt, len(data)) + data


def option_reply(opt: int, rtype: int, data: bytes = b"") -> bytes:
    return _OPT_REPLY.pack(OPT_REPLY_MAGIC, opt, rtype, len(data)) + data


def parse_option_reply(data: bytes) -> tuple[int, int, int]:
    """(option, reply type, data length) of a 20-byte option reply header (tests)."""
    magic, opt, rtype, length = _OPT_REPLY.unpack(data)
    if magic != OPT_REPLY_MAGIC:
        raise ProtocolError(f"bad option reply magic {magic:#x}")
    return opt, rtype, length


def info_export(size: int, tflags: int) -> bytes:
    return _U16.pack(INFO_EXPORT) + _U64.pack(size) + _U16.pack(tflags)


def info_block_size(minimum: int = MIN_BLOCK, preferred: int = PREFERRED_BLOCK, maximum: int = MAX_PAYLOAD) -> bytes:
    return _U16.pack(INFO_BLOCK_SIZE) + struct.pack(">III", minimum, preferred, maximum)


def info_name(name: str) -> bytes:
    return _U16.pack(INFO_NAME) + name.encode()


def info_description(text: str) -> bytes:
    return _U16.pack(INFO_DESCRIPTION) + text.encode()


def export_name_reply(size: int, tflags: int, no_zeroes: bool) -> bytes:
    """The answer to OPT_EXPORT_NAME: size, flags and (unless NO_ZEROES) 124 zero bytes."""
    return _U64.pack(size) + _U16.pack(tflags) + (b"" if no_zeroes else bytes(124))


def server_entry(name: str, description: str = "") -> bytes:
    """REP_SERVER data: u32 name length, name, description."""
    raw = name.encode()
    return _U32.pack(len(raw)) + raw + description.encode()


def meta_context(ctx_id: int, name: str) -> bytes:
    return _U32.pack(ctx_id) + name.encode()


class Reader:
    """Bounds-checked reading of option data; a short or malformed body raises ValueError."""

    def __init__(self, data: bytes) -> None:
        self.data, self.pos = data, 0

    def take(self, n: int) -> bytes:
        if n < 0 or self.pos + n > len(self.data):
            raise ValueError("option data is shorter than its fields say")
        out = self.data[self.pos : self.pos + n]
        self.pos += n
        return out

    def u16(self) -> int:
        return _U16.unpack(self.take(2))[0]

    def u32(self) -> int:
        return _U32.unpack(self.take(4))[0]

    def string(self, length: int) -> str:
        if length > MAX_STRING:
            raise ValueError(f"a string of {length} bytes (the limit is {MAX_STRING})")
        raw = self.take(length)
        if b"\0" in raw:
            raise ValueError("a string holds a NUL byte")
        return raw.decode()  # UnicodeDecodeError is a ValueError

    def done(self) -> bool:
        return self.pos == len(self.data)


@dataclass(frozen=True)
class InfoRequest:
    """The data of OPT_INFO / OPT_GO."""

    name: str
    infos: tuple[int, ...]


def parse_info_request(data: bytes) -> InfoRequest:
    r = Reader(data)
    name = r.string(r.u32())
    n = r.u16()
    infos = tuple(r.u16() for _ in range(n))
    if not r.done():
        raise ValueError("trailing bytes after the information requests")
    return InfoRequest(name, infos)


def info_request(name: str, infos: tuple[int, ...] = ()) -> bytes:
    """OPT_INFO / OPT_GO data (tests)."""
    raw = name.encode()
    return _U32.pack(len(raw)) + raw + _U16.pack(len(infos)) + b"".join(_U16.pack(i) for i in infos)


def parse_meta_request(data: bytes) -> tuple[str, list[str]]:
    """(export name, queries) of LIST/SET_META_CONTEXT."""
    r = Reader(data)
    name = r.string(r.u32())
    n = r.u32()
    if n > 1024:
        raise ValueError(f"{n} meta context queries")
    queries = [r.string(r.u32()) for _ in range(n)]
    if not r.done():
        raise ValueError("trailing bytes after the meta context queries")
    return name, queries


def meta_request(name: str, queries: list[str]) -> bytes:
    """LIST/SET_META_CONTEXT data (tests)."""
    out = [_U32.pack(len(name.encode())), name.encode(), _U32.pack(len(queries))]
    for q in queries:
        out += [_U32.pack(len(q.encode())), q.encode()]
    return b"".join(out)


# -- transmission ----------------------------------------------------------------------------
def request(cmd: int, cookie: int, offset: int = 0, length: int = 0, flags: int = 0) -> bytes:
    """A request header as a client sends it (tests)."""
    return REQUEST.pack(REQUEST_MAGIC, flags, cmd, cookie, offset, length)


def simple_reply(cookie: int, error: int = 0) -> bytes:
    return SIMPLE_REPLY.pack(SIMPLE_REPLY_MAGIC, error, cookie)


def chunk_header(cookie: int, ctype: int, length: int, done: bool) -> bytes:
    return STRUCTURED_HEADER.pack(STRUCTURED_REPLY_MAGIC, REPLY_FLAG_DONE if done else 0, ctype, cookie, length)


def offset_data_header(cookie: int, offset: int, length: int, done: bool) -> bytes:
    """The header and offset of an OFFSET_DATA chunk whose ``length`` data bytes follow."""
    return chunk_header(cookie, REPLY_OFFSET_DATA, 8 + length, done) + _U64.pack(offset)


def offset_hole(cookie: int, offset: int, length: int, done: bool) -> bytes:
    return chunk_header(cookie, REPLY_OFFSET_HOLE, 12, done) + struct.pack(">QI", offset, length)


def error_chunk(cookie: int, error: int, message: str = "", offset: int | None = None) -> bytes:
    raw = message.encode()[:4096]
    body = _U32.pack(error) + _U16.pack(len(raw)) + raw
    if offset is not None:
        return chunk_header(cookie, REPLY_ERROR_OFFSET, len(body) + 8, True) + body + _U64.pack(offset)
    return chunk_header(cookie, REPLY_ERROR, len(body), True) + body


def block_status_chunk(cookie: int, ctx_id: int, extents: list[tuple[int, int]], done: bool = True) -> bytes:
    """A BLOCK_STATUS chunk: context id, then (length, flags) per extent."""
    body = _U32.pack(ctx_id) + b"".join(struct.pack(">II", n, f) for n, f in extents)
    return chunk_header(cookie, REPLY_BLOCK_STATUS, len(body), done) + body


def none_chunk(cookie: int) -> bytes:
    return chunk_header(cookie, REPLY_NONE, 0, True)
