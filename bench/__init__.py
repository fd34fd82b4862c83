"""Benchmarks of the Mix-IP mesh (`python -m bench`, `make bench`): a separate suite, not timed
tests. Every figure is measured side by side with its baseline in one run (interleaved, medians),
because the machine is shared and noisy; `bench/results.json` holds the figures with how each was
measured, `bench/results.md` the table (docs/performance.md holds the table of a full run)."""
