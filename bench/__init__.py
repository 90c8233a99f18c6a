"""powerq benchmarks: ``python -m bench all`` (see BENCHMARKS.md). Not imported by powerq."""
