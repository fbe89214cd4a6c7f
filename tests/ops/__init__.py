"""Operator tooling: the ``torpor`` CLI, ``runtime.ops``, the benchmarks."""
