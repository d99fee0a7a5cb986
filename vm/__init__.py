"""The test-host lab: network namespaces for two array sites (lab.py), and test hosts attaching
NBD exports with nbdfuse and a loop device (nbdhost.py)."""

__all__ = ["lab", "nbdhost"]
