"""Benchmarks: run on demand (`make bench`, `python -m benchmarks ...`), never by pytest.

Each writes JSON to benchmarks/results/<name>.json with the command, the git commit, the machine
and its figures (medians of seeded, repeated runs). See README.md "Benchmarks" for the targets.
"""
