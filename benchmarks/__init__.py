"""Reproducible benchmarks: each `bench_*.py` module has a `main()` that prints a table with the
machine it ran on and writes its figures as JSON under var/bench/. Run them all with `make bench`
(`python -m benchmarks`) or one with `python -m benchmarks.bench_NAME`."""
