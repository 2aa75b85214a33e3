"""Benchmarks of lineaged against its peers; ``python -m bench`` runs every ``bench_*`` module."""
