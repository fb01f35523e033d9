"""`make bench`: throughput, latency and footprint of fmnist-faust on the real services.

Run with ``python -m bench.run`` (``--smoke`` for the tiny CI version); see
``bench/run.py`` for the stages and ``bench/results/latest.md`` for the last table.
"""
