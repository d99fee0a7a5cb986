"""NBD over TLS with certificates from vstor pki: required TLS refuses plain clients, --allow
refuses other client certificates, and TLS state is renegotiated after STARTTLS."""

from __future__ import annotations

import os
import shutil
import time

import pytest
from nbdkit import MiB, Raw, handle, nbd, served

from vstor.nbd import proto as P
from vstor.replication import pki

pytestmark = pytest.mark.skipif(nbd is None, reason="needs python3-libnbd (make setup)")


@pytest.fixture(scope="module")
def certs(tmp_path_factory) -> dict[str, str]:
    """A CA, the array's certificate (named localhost, which clients dial), and client
    directories in libnbd's layout for alice and bob."""
    base = tmp_path_factory.mktemp("pki")
    ca = str(base / "ca")
    pki.init_ca(ca)
    pki.issue(ca, "localhost")
    out = {"server": ca}
    for who in ("alice", "bob"):
        cert, key = pki.issue(ca, who)
        d = base / who
        d.mkdir()
        shutil.copy(os.path.join(ca, "ca.pem"), d / "ca-cert.pem")
        shutil.copy(cert, d / "client-cert.pem")
        shutil.copy(key, d / "client-key.pem")
        out[who] = str(d)
    nocert = base / "nocert"
    nocert.mkdir()
    shutil.copy(os.path.join(ca, "ca.pem"), nocert / "ca-cert.pem")
    out["nocert"] = str(nocert)
    return out


def tls_handle(port: int, export: str, certdir: str):
    h = handle()
    h.set_tls(nbd.TLS_REQUIRE)
    h.set_tls_certificates(certdir)
    h.connect_uri(f"nbds://localhost:{port}/{export}")
    return h


def test_tls_required_and_allow_list(tmp_path, certs) -> None:
    with served(tmp_path, tls_dir=certs["server"], tls_name="localhost") as s:
        s.export("vol")
        s.export("alices", "vol", allow=("alice",))
        s.start()
        with pytest.raises(nbd.Error, match="(?i)tls"):  # plain: NBD_REP_ERR_TLS_REQD
            handle(f"nbd://127.0.0.1:{s.port}/vol")
        h = tls_handle(s.port, "vol", certs["bob"])
        h.pwrite(b"secret", 0, nbd.CMD_FLAG_FUA)
        assert h.pread(6, 0) == b"secret"
        assert h.get_structured_replies_negotiated() and h.can_meta_context("base:allocation")
        # TLS connections poll too: with this client idle after its lone read, the connection
        # finds nothing received when it waits, and polls (a busy machine's scheduling can
        # otherwise have the next request there first, and then nothing is polled for)
        deadline = time.monotonic() + 10
        while (d := s.server.describe())["polls_caught"] + d["polls_missed"] == 0:
            assert time.monotonic() < deadline, d
            time.sleep(0.001)
        h.shutdown()
        a = tls_handle(s.port, "alices", certs["alice"])
        assert a.pread(6, 0) == b"secret"
        a.shutdown()
        with pytest.raises(nbd.Error, match="policy"):  # bob's certificate is not on the list
            tls_handle(s.port, "alices", certs["bob"])
        with pytest.raises(nbd.Error):  # no client certificate: the TLS handshake fails
            tls_handle(s.port, "vol", certs["nocert"])
        names: list[str] = []
        h = handle()
        h.set_tls(nbd.TLS_REQUIRE)
        h.set_tls_certificates(certs["bob"])
        h.set_opt_mode(True)
        h.connect_uri(f"nbds://localhost:{s.port}/vol")
        h.opt_list(lambda name, desc: names.append(name))
        assert names == ["vol"]  # bob does not see alice's export
        h.opt_abort()
        raw = Raw(s.port)  # plain EXPORT_NAME on a TLS server: closed, no data
        raw.s.sendall(P.option_request(P.OPT_EXPORT_NAME, b"vol"))
        assert raw.closed()
        raw.close()
        assert s.server.describe()["tls"]


def test_starttls_refused_without_tls_dir(tmp_path) -> None:
    with served(tmp_path, volumes={"vol": MiB}) as s:
        s.export("vol")
        s.start()
        c = Raw(s.port)
        assert c.option(P.OPT_STARTTLS)[0][0] == P.REP_ERR_POLICY
        c.go("vol")
        c.close()
