"""The test-host lab: network namespaces for two array sites (see lab.py)."""
