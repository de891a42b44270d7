"""The ``parallax`` command line."""
