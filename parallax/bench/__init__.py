"""Benchmarks behind ``parallax bench``: each prints a table, or JSON with ``--json``."""
