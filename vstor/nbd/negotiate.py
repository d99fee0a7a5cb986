"""The fixed-newstyle option haggling of one connection, as a state machine. Pure: no sockets.

The connection feeds each option to :meth:`Negotiation.option` and sends the replies it gets
back, then acts on the step's ``action``: ``starttls`` (wrap the socket, then call
:meth:`Negotiation.tls_started`), ``go`` (enter transmission with ``step.export``), ``abort``
or ``close``. What an export is and who may use it is the :class:`Catalog`'s business.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

from vstor.nbd import proto as P

CONTEXT_ID = 1  # the id of base:allocation, the only meta context vstor serves


@dataclass(frozen=True)
class ExportInfo:
    """What a client learns about an export during negotiation."""

    name: str
    size: int
    read_only: bool
    description: str = ""
    key: object = None  # the catalog's handle on it, carried to the transmission phase


class Refused(Exception):
    """The catalog refuses an export: ``rep`` is the NBD_REP_ERR_* to send, the text says why."""

    def __init__(self, rep: int, message: str) -> None:
        super().__init__(message)
        self.rep, self.message = rep, message


class Catalog(Protocol):
    def lookup(self, name: str, peer: str | None, tls: bool) -> ExportInfo:
        """The export ``name`` for a client (``peer``: its certificate's common name under TLS);
        raises :class:`Refused`."""
        ...

    def listing(self, peer: str | None, tls: bool) -> list[tuple[str, str]]:
        """(name, description) of the exports this client may see."""
        ...


def transmission_flags(info: ExportInfo, structured: bool) -> int:
    """The u16 transmission flags of ``info``. Multi-conn is safe for every vstor export: a write
    is visible to every reader once it returns, and a flush makes every returned write durable."""
    f = P.TF_HAS_FLAGS | P.TF_SEND_FLUSH | P.TF_SEND_FUA | P.TF_CAN_MULTI_CONN | P.TF_SEND_CACHE
    if info.read_only:
        f |= P.TF_READ_ONLY
    else:
        f |= P.TF_SEND_TRIM | P.TF_SEND_WRITE_ZEROES | P.TF_SEND_FAST_ZERO
    if structured:
        f |= P.TF_SEND_DF
    return f


@dataclass
class Step:
    replies: list[bytes] = field(default_factory=list)
    action: str = ""  # "", "starttls", "go", "abort" or "close"
    export: ExportInfo | None = None
    why: str = ""  # for "close": what to log


@dataclass
class Session:
    """What negotiation settled, handed to the transmission phase."""

    export: ExportInfo
    flags: int
    structured: bool
    base_allocation: bool  # BLOCK_STATUS may be asked for base:allocation


class Negotiation:
    def __init__(self, catalog: Catalog, tls_available: bool, tls_required: bool, client_flags: int = 0) -> None:
        self.catalog = catalog
        self.tls_available, self.tls_required = tls_available, tls_required
        self.no_zeroes = bool(client_flags & P.FLAG_NO_ZEROES)
        self.tls = False
        self.peer: str | None = None
        self.count = 0
        self._reset()

    def _reset(self) -> None:
        self.structured = False
        self.meta_export: str | None = None  # the export SET_META_CONTEXT named, if it selected base:allocation

    def tls_started(self, peer: str | None) -> None:
        """TLS is up: forget everything negotiated in plain text (CVE-2021-3716)."""
        self.tls, self.peer = True, peer
        self._reset()

    def session(self, export: ExportInfo) -> Session:
        return Session(export, transmission_flags(export, self.structured), self.structured,
                       self.structured and self.meta_export == export.name)

    # -- one option ------------------------------------------------------------------------------
    def option(self, opt: int, data: bytes) -> Step:
        self.count += 1
        if self.count > P.MAX_OPTIONS:
            return Step(action="close", why=f"more than {P.MAX_OPTIONS} options")
        if opt == P.OPT_ABORT:
            return Step([P.option_reply(opt, P.REP_ACK)], action="abort")
        if self.tls_required and not self.tls:
            if opt == P.OPT_EXPORT_NAME:
                return Step(action="close", why="EXPORT_NAME without TLS on a server that requires TLS")
            if opt != P.OPT_STARTTLS:
                return self._err(opt, P.REP_ERR_TLS_REQD, "this server requires TLS: use nbds:// with a "
                                 "client certificate from 'vstor pki' (STARTTLS first)")
        try:
            handler = {P.OPT_EXPORT_NAME: self._export_name, P.OPT_LIST: self._list, P.OPT_STARTTLS: self._starttls,
                       P.OPT_INFO: self._info, P.OPT_GO: self._info, P.OPT_STRUCTURED_REPLY: self._structured,
                       P.OPT_LIST_META_CONTEXT: self._meta, P.OPT_SET_META_CONTEXT: self._meta}.get(opt)
            if handler is None:
                return self._err(opt, P.REP_ERR_UNSUP, f"option {opt} is not supported by vstor")
            return handler(opt, data)
        except ValueError as e:
            if opt == P.OPT_EXPORT_NAME:  # it has no error reply: the protocol says close
                return Step(action="close", why=f"malformed EXPORT_NAME: {e}")
            return self._err(opt, P.REP_ERR_INVALID, f"malformed option {opt}: {e}")
        except Refused as e:
            if opt == P.OPT_EXPORT_NAME:
                return Step(action="close", why=e.message)
            return self._err(opt, e.rep, e.message)

    @staticmethod
    def _err(opt: int, rep: int, message: str) -> Step:
        return Step([P.option_reply(opt, rep, message.encode())])

    def _export_name(self, opt: int, data: bytes) -> Step:
        name = P.Reader(data).string(len(data))
        info = self.catalog.lookup(name, self.peer, self.tls)
        reply = P.export_name_reply(info.size, transmission_flags(info, self.structured), self.no_zeroes)
        return Step([reply], action="go", export=info)

    def _list(self, opt: int, data: bytes) -> Step:
        if data:
            return self._err(opt, P.REP_ERR_INVALID, "LIST takes no data")
        out = [P.option_reply(opt, P.REP_SERVER, P.server_entry(n, d))
               for n, d in self.catalog.listing(self.peer, self.tls)]
        return Step([*out, P.option_reply(opt, P.REP_ACK)])

    def _starttls(self, opt: int, data: bytes) -> Step:
        if data:
            return self._err(opt, P.REP_ERR_INVALID, "STARTTLS takes no data")
        if self.tls:
            return self._err(opt, P.REP_ERR_INVALID, "TLS is already on")
        if not self.tls_available:
            return self._err(opt, P.REP_ERR_POLICY, "TLS is not configured on this server (start the array "
                             "with --nbd-tls-dir)")
        return Step([P.option_reply(opt, P.REP_ACK)], action="starttls")

    def _structured(self, opt: int, data: bytes) -> Step:
        if data:
            return self._err(opt, P.REP_ERR_INVALID, "STRUCTURED_REPLY takes no data")
        if self.structured:
            return self._err(opt, P.REP_ERR_INVALID, "structured replies are already on")
        self.structured = True
        return Step([P.option_reply(opt, P.REP_ACK)])

    def _info(self, opt: int, data: bytes) -> Step:
        req = P.parse_info_request(data)
        info = self.catalog.lookup(req.name, self.peer, self.tls)
        out = [P.option_reply(opt, P.REP_INFO, P.info_export(info.size, transmission_flags(info, self.structured))),
               P.option_reply(opt, P.REP_INFO, P.info_block_size())]
        if P.INFO_NAME in req.infos:
            out.append(P.option_reply(opt, P.REP_INFO, P.info_name(info.name)))
        if P.INFO_DESCRIPTION in req.infos and info.description:
            out.append(P.option_reply(opt, P.REP_INFO, P.info_description(info.description)))
        out.append(P.option_reply(opt, P.REP_ACK))
        if opt == P.OPT_GO:
            return Step(out, action="go", export=info)
        return Step(out)

    def _meta(self, opt: int, data: bytes) -> Step:
        setting = opt == P.OPT_SET_META_CONTEXT
        if setting:
            self.meta_export = None  # replaced even if this request fails
        if not self.structured:
            return self._err(opt, P.REP_ERR_INVALID, "negotiate structured replies before meta contexts")
        name, queries = P.parse_meta_request(data)
        self.catalog.lookup(name, self.peer, self.tls)
        if setting:
            chosen = any(q in (P.BASE_ALLOCATION, "base:") for q in queries)
        else:
            chosen = not queries or any(q in (P.BASE_ALLOCATION, "base:") for q in queries)
        out = []
        if chosen:
            out.append(P.option_reply(opt, P.REP_META_CONTEXT,
                                      P.meta_context(CONTEXT_ID if setting else 0, P.BASE_ALLOCATION)))
            if setting:
                self.meta_export = name
        out.append(P.option_reply(opt, P.REP_ACK))
        return Step(out)
