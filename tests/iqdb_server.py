"""Moved to :mod:`bench.iqdb_server`; kept only for test_s3.py, which another branch is
rewriting. Delete once it imports from ``bench.iqdb_server`` (at that merge)."""

from bench.iqdb_server import IqdbServer, fake_hash

__all__ = ["IqdbServer", "fake_hash"]
