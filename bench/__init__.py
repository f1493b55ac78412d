"""Wasm-shim benchmarks: `python -m bench` (or `make bench`) prints a table and writes PNG plots.

Every figure runs our shim side by side with a baseline in the same run (runc with Debian's static busybox, and
any `--peer-shim PATH`), interleaved A/B, and reports medians with their spread. Benchmarks are not tests: they
assert nothing about speed; `tests/integration/test_bench_smoke.py` only checks that the harness works.

Modules: `stats` (pure summaries), `machine` (what ran where), `testbed` (a private containerd with the images and
runtimes imported, timed `ctr` runs, process memory), one module per figure (`cold_start`, `instance_start`,
`start_cmd`, `throughput`, `density`, `compute`, `supply_chain`, `cli`, ...), `report` (table, markdown, plots)
and `__main__` (the CLI).
"""
