"""Runs that write the tables in ``docs/``, built on the library."""
