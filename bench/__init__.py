"""Benchmarks: each module is a command (``python -m bench.<name>``) that prints its figures.

They start what they measure themselves, on loopback only: a private Redis (so its
command counters hold nothing but this run), taskcast's processes, and load generators
in processes of their own. ``--small`` is a quick smoke run of the same code.
"""
