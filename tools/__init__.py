"""Developer tools and one-off analyses, run from a checkout as ``python -m tools.<name>``.

Not part of the wheel: the product benchmarks that ship as ``learned-optim bench`` live in
``benchmarks/``. Tools may import ``learned_optim`` (runtime and meta) and ``benchmarks``;
nothing imports ``tools``. Their committed results live in ``tools/results/``.
"""
