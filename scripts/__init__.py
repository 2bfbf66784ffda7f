"""Developer scripts (not part of the installed package): ``scripts/bench`` holds the benchmarks,
run from the repository root as ``python -m scripts.bench.NAME``."""
