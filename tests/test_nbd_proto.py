"""The pure NBD parts: negotiation state machine, request rules, block status extents."""

from __future__ import annotations

import pytest

from vstor.nbd import proto as P
from vstor.nbd.negotiate import ExportInfo, Negotiation, Refused, Session, transmission_flags
from vstor.nbd.transmit import allocation_extents, check


class Cat:
    def __init__(self, **exports: ExportInfo) -> None:
        self.exports = exports

    def lookup(self, name: str, peer: str | None, tls: bool) -> ExportInfo:
        if name not in self.exports:
            raise Refused(P.REP_ERR_UNKNOWN, f"no export named {name!r}")
        return self.exports[name]

    def listing(self, peer: str | None, tls: bool) -> list[tuple[str, str]]:
        return [(n, "") for n in self.exports]


def replies(step) -> list[tuple[int, int, bytes]]:
    out = []
    for r in step.replies:
        opt, rtype, n = P.parse_option_reply(r[:20])
        out.append((opt, rtype, r[20 : 20 + n]))
    return out


VOL = ExportInfo("vol", 1 << 20, False)
RO = ExportInfo("ro", 1 << 20, True)


def test_go_sends_export_and_block_size_and_enters_transmission() -> None:
    n = Negotiation(Cat(vol=VOL), False, False)
    step = n.option(P.OPT_GO, P.info_request("vol", (P.INFO_NAME,)))
    got = replies(step)
    assert step.action == "go" and step.export == VOL
    assert [r[1] for r in got] == [P.REP_INFO, P.REP_INFO, P.REP_INFO, P.REP_ACK]
    assert got[0][2] == P.info_export(VOL.size, transmission_flags(VOL, False))
    assert got[1][2] == P.info_block_size(1, 4096, 32 << 20)


def test_info_then_go_agree_and_unknown_export_is_err_unknown() -> None:
    n = Negotiation(Cat(vol=VOL), False, False)
    info = replies(n.option(P.OPT_INFO, P.info_request("vol")))
    go = replies(n.option(P.OPT_GO, P.info_request("vol")))
    assert [r[1:] for r in info] == [r[1:] for r in go]
    bad = replies(n.option(P.OPT_GO, P.info_request("nope")))
    assert bad[0][1] == P.REP_ERR_UNKNOWN and b"nope" in bad[0][2]


def test_tls_required_refuses_everything_but_starttls() -> None:
    n = Negotiation(Cat(vol=VOL), True, True)
    for opt, data in ((P.OPT_GO, P.info_request("vol")), (P.OPT_LIST, b""), (P.OPT_STRUCTURED_REPLY, b"")):
        assert replies(n.option(opt, data))[0][1] == P.REP_ERR_TLS_REQD
    assert n.option(P.OPT_EXPORT_NAME, b"vol").action == "close"
    assert n.option(P.OPT_STARTTLS, b"").action == "starttls"


def test_starttls_forgets_structured_replies_and_contexts() -> None:
    n = Negotiation(Cat(vol=VOL), True, False)
    n.option(P.OPT_STRUCTURED_REPLY, b"")
    n.option(P.OPT_SET_META_CONTEXT, P.meta_request("vol", [P.BASE_ALLOCATION]))
    assert n.session(VOL).base_allocation
    assert n.option(P.OPT_STARTTLS, b"").action == "starttls"
    n.tls_started("alice")
    s = n.session(VOL)
    assert not s.structured and not s.base_allocation
    assert replies(n.option(P.OPT_STARTTLS, b""))[0][1] == P.REP_ERR_INVALID  # a second one


def test_meta_context_rules() -> None:
    n = Negotiation(Cat(vol=VOL), False, False)
    set_ = P.meta_request("vol", ["base:"])
    assert replies(n.option(P.OPT_SET_META_CONTEXT, set_))[0][1] == P.REP_ERR_INVALID  # before structured
    assert replies(n.option(P.OPT_STRUCTURED_REPLY, b""))[0][1] == P.REP_ACK
    assert replies(n.option(P.OPT_STRUCTURED_REPLY, b""))[0][1] == P.REP_ERR_INVALID  # twice
    listed = replies(n.option(P.OPT_LIST_META_CONTEXT, P.meta_request("vol", [])))
    assert listed[0][1] == P.REP_META_CONTEXT and listed[0][2].endswith(b"base:allocation")
    unknown = replies(n.option(P.OPT_SET_META_CONTEXT, P.meta_request("vol", ["qemu:dirty-bitmap:x"])))
    assert [r[1] for r in unknown] == [P.REP_ACK]  # unknown namespaces are ignored, not errors
    chosen = replies(n.option(P.OPT_SET_META_CONTEXT, set_))
    assert chosen[0][1] == P.REP_META_CONTEXT
    assert n.session(VOL).base_allocation and not n.session(RO).base_allocation  # only for the named export


def test_bad_options_get_errors_and_the_count_is_bounded() -> None:
    n = Negotiation(Cat(vol=VOL), False, False)
    assert replies(n.option(0x7654321, b"x"))[0][1] == P.REP_ERR_UNSUP
    assert replies(n.option(P.OPT_LIST, b"junk"))[0][1] == P.REP_ERR_INVALID
    assert replies(n.option(P.OPT_GO, b"\0\0\0\x09ab"))[0][1] == P.REP_ERR_INVALID  # short
    assert replies(n.option(P.OPT_STARTTLS, b""))[0][1] == P.REP_ERR_POLICY  # no TLS configured
    for _ in range(P.MAX_OPTIONS - 4):
        n.option(0x99, b"")
    assert n.option(0x99, b"").action == "close"


def test_read_only_flags_and_request_rules() -> None:
    assert transmission_flags(RO, True) & P.TF_READ_ONLY
    assert not transmission_flags(RO, True) & (P.TF_SEND_TRIM | P.TF_SEND_WRITE_ZEROES)
    assert transmission_flags(VOL, False) & P.TF_CAN_MULTI_CONN
    rw, ro = Session(VOL, 0, True, True), Session(RO, 0, True, False)
    assert check(P.CMD_WRITE, 0, 0, 512, ro)[0] == P.EPERM
    assert check(P.CMD_TRIM, 0, 0, 512, ro)[0] == P.EPERM
    assert check(P.CMD_READ, P.CMDF_FUA, 0, 512, ro) == (0, "")
    assert check(P.CMD_READ, 0x80, 0, 512, rw)[0] == P.EINVAL
    assert check(P.CMD_READ, 0, VOL.size - 1, 2, rw)[0] == P.EINVAL
    assert check(P.CMD_WRITE, 0, VOL.size - 1, 2, rw)[0] == P.ENOSPC
    assert check(P.CMD_WRITE_ZEROES, P.CMDF_FAST_ZERO | P.CMDF_NO_HOLE, 0, 512, rw) == (0, "")
    assert check(P.CMD_BLOCK_STATUS, 0, 0, 512, ro)[0] == P.EINVAL  # no context selected
    assert check(99, 0, 0, 0, rw)[0] == P.EINVAL
    assert check(P.CMD_READ, 0, 0, 0, rw)[0] == P.EINVAL


@pytest.mark.parametrize(("mapped", "req_one", "want"), [
    ([], False, [(100, 3)]),
    ([(0, 100)], False, [(100, 0)]),
    ([(10, 20), (20, 40), (60, 200)], False, [(10, 3), (10, 0), (20, 0), (20, 3), (40, 0)]),
    ([(10, 20)], True, [(10, 3)]),
    ([(0, 20)], True, [(20, 0)]),
])
def test_allocation_extents(mapped, req_one, want) -> None:
    assert allocation_extents(0, 100, mapped, req_one) == want


def test_extents_are_capped() -> None:
    mapped = [(i * 2, i * 2 + 1) for i in range(100)]
    out = allocation_extents(0, 200, mapped, limit=7)
    assert len(out) == 7 and sum(n for n, _ in out) < 200
