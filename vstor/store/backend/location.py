"""Where a pool is: a directory or a rados://CEPHPOOL/PREFIX location, and the backend that
opens it (:func:`open_backend`; python3-rados is imported only for a RADOS location).
"""


from __future__ import annotations

import os

from vstor.errors import UsageError
from vstor.faults import NO_FAULTS, Faults
from vstor.store.backend.base import PoolBackend
from vstor.store.backend.local import LocalBackend

__all__ = ["CEPH_CONF_ENV", "CEPH_ID_ENV", "RADOS_SCHEME", "RadosLocation", "is_rados", "open_backend", "parse_rados"]

RADOS_SCHEME = "rados://"
CEPH_CONF_ENV = "VSTOR_CEPH_CONF"
CEPH_ID_ENV = "VSTOR_CEPH_ID"


class RadosLocation(tuple):
    """(pool, prefix) of a rados://POOL/PREFIX location."""

    __slots__ = ()

    def __new__(cls, pool: str, prefix: str) -> RadosLocation:
        return super().__new__(cls, (pool, prefix))

    @property
    def pool(self) -> str:
        return self[0]

    @property
    def prefix(self) -> str:
        return self[1]


def is_rados(location: str) -> bool:
    return location.startswith(RADOS_SCHEME)


def parse_rados(location: str) -> RadosLocation:
    """Split rados://POOL/PREFIX; UsageError names what is wrong."""
    rest = location[len(RADOS_SCHEME):] if is_rados(location) else ""
    pool, _, prefix = rest.partition("/")
    if not pool or not prefix or prefix.endswith("/") or "//" in prefix:
        raise UsageError(f"bad RADOS pool location {location!r}: use rados://POOL/PREFIX "
                         "(a Ceph pool and a name for the vstor pool inside it)")
    return RadosLocation(pool, prefix)


def open_backend(location: str, ceph_conf: str | None = None, ceph_id: str | None = None,
                 faults: Faults = NO_FAULTS, timeout: int | None = None) -> PoolBackend:
    """The backend of a pool directory or a rados://POOL/PREFIX location. A RADOS location
    needs a ceph.conf (``ceph_conf`` or $VSTOR_CEPH_CONF); the client id defaults to admin."""
    if not is_rados(location):
        return LocalBackend(location, faults)
    from vstor.store.backend.rados.backend import DEFAULT_TIMEOUT, RadosBackend, connect_cluster
    loc = parse_rados(location)
    conf = ceph_conf or os.environ.get(CEPH_CONF_ENV)
    if not conf:
        raise UsageError(f"{location} is a RADOS pool: give --ceph-conf FILE or set {CEPH_CONF_ENV}")
    cluster = connect_cluster(conf, ceph_id or os.environ.get(CEPH_ID_ENV), timeout or DEFAULT_TIMEOUT)
    return RadosBackend(cluster, loc.pool, loc.prefix, faults, owns_cluster=True)
