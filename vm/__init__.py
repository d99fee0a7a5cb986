"""The test-host lab: network namespaces for two array sites (lab.py), test hosts attaching
NBD exports with nbdfuse and a loop device (nbdhost.py), and a throwaway one-node Ceph cluster
for the RADOS tests and benchmarks (ceph.py)."""

__all__ = ["ceph", "lab", "nbdhost"]
