"""affectstream benchmarks: `affectstream bench` (see bench/cli.py) and the latest results (RESULTS.md)."""
