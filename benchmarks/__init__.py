"""Benchmark suites: learned optimizers against tuned SGD and Adam, and their overhead.

Installed as ``learned_optim.benchmarks`` (reachable as ``learned-optim bench``); in a checkout
also ``python -m benchmarks``. Committed results live in ``benchmarks/results/``.
"""
