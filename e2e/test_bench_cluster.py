"""The cluster benchmark's harness (bench/cluster.py) on the e2e session cluster, at 3 replicas: a smoke run.

It checks that the figure ran both variants on node-a and that its table has every row with a value; it never
asserts anything about time or memory (benchmarks are not tests). The shim is put on node-a by
e2e/conftest.py's module fixture ``shim_on_node_a`` (set up and undone again for this module).
"""

from __future__ import annotations

import math

from bench import cluster as bench_cluster
from bench import report
from bench.machine import Machine
from e2e.conftest import Cluster

REPLICAS = 3
ROWS = ("all 3 Ready", "machine CPU per pod", "of which the runtime's", "of which containerd's", "last pod created",
        "last pod bound to the node", "first pod Ready", "kubelet's API client throttled", "per pod, watch",
        "per pod, API timestamps", "PSS shims+guests per pod",
        "PSS containerd per pod", "PSS total per pod")


def test_cluster_figure_has_its_rows(cluster: Cluster, shim_on_node_a: str) -> None:
    figure = bench_cluster.measure(cluster.api, cluster.state, replicas=REPLICAS)
    assert not figure.error, figure.error
    by_label = {row.label: row for row in figure.rows}
    for variant in bench_cluster.VARIANTS:
        for what in ROWS:
            row = by_label[f"{variant.label}: {what}"]
            assert row.summary.n >= 1 and not math.isnan(row.summary.p50), row
        assert by_label[f"{variant.label}: per pod, watch"].summary.n == REPLICAS
    wasm_time = by_label[f"{bench_cluster.WASM.label}: all {REPLICAS} Ready"]
    assert not math.isnan(wasm_time.vs_baseline) and wasm_time.met is not None
    table = report.text_table(Machine(nproc=2, cpu="", mem_gib=0, kernel=""), [figure])
    assert f"{bench_cluster.WASM.label}: PSS total per pod" in table
