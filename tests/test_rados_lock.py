"""The pool's exclusive RADOS lock (cls_lock with a cookie and renewals): a second client is
refused while the owner holds or renews it, and gets it once the owner releases it or dies
and the lock expires. Needs the session's Ceph cluster (``make test-rados``)."""

from __future__ import annotations

import threading
import time

import pytest
from cephlab import CLIENT_TIMEOUT, CephLab

from vstor.errors import Busy
from vstor.store.backend.location import open_backend

pytestmark = pytest.mark.rados
DURATION = 3  # seconds: short, so expiry is seen quickly; renewals every 1 s leave 2 s of slack


def _backend(lab: CephLab, location: str):  # noqa: ANN202
    return open_backend(location, ceph_conf=str(lab.conf), timeout=CLIENT_TIMEOUT)


def test_second_owner_refused_until_release_or_expiry(ceph_lab: CephLab, rados_location: str) -> None:
    from vstor.store.backend.rados.lock import RadosLock
    a, b = _backend(ceph_lab, rados_location), _backend(ceph_lab, rados_location)  # two clients, like two hosts
    try:
        first = RadosLock(a.meta, duration=DURATION, location=rados_location)
        second = RadosLock(b.meta, duration=DURATION, location=rados_location)
        first.acquire()
        with pytest.raises(Busy, match=r"owned by vstor daemon pid \d+ on .* \(cookie "):
            second.acquire()
        first.release()
        second.acquire()  # released: at once
        # the owner "dies" (no renewal, no release): refused until the lock expires, then taken
        died = time.monotonic()
        third = RadosLock(a.meta, duration=DURATION, location=rados_location)
        with pytest.raises(Busy):
            third.acquire()
        while True:
            try:
                third.acquire()
                break
            except Busy:
                assert time.monotonic() - died < DURATION + 5, "the lock never expired"
                time.sleep(0.2)
        assert time.monotonic() - died >= DURATION - 0.5
        with pytest.raises(Exception, match="lost ownership"):
            second.renew()  # the dead owner, back: its renewal fails, it must stop writing
        third.release()
    finally:
        a.close()
        b.close()


def test_renewals_keep_the_lock_past_its_duration(ceph_lab: CephLab, rados_location: str) -> None:
    from vstor.store.backend.rados.lock import RadosLock
    a, b = _backend(ceph_lab, rados_location), _backend(ceph_lab, rados_location)
    lost: list[Exception] = []
    try:
        owner = RadosLock(a.meta, duration=DURATION, location=rados_location)
        owner.acquire()
        owner.start_renewal(lost.append)
        other = RadosLock(b.meta, duration=DURATION, location=rados_location)
        end = time.monotonic() + 1.5 * DURATION + 0.5
        while time.monotonic() < end:  # well past the duration: still refused
            with pytest.raises(Busy):
                other.acquire()
            threading.Event().wait(0.5)
        assert not lost
        owner.release()
        other.acquire()
        other.release()
    finally:
        a.close()
        b.close()
