"""Asynchronous replication of consistency groups between two arrays (issue 4; in progress)."""
