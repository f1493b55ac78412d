"""Operations and access pieces that need no daemon: the metrics_address config key, the logfmt line
format, containerd's identifier rule, and the metrics registry fed by the events queue."""

from __future__ import annotations

import asyncio
import logging
import sys

import pytest
from prometheus_client.parser import text_string_to_metric_families

from wasm_shim.shim.config import ConfigError, ShimConfig, load_config, parse_metrics_address
from wasm_shim.shim.daemon.identifiers import id_problem
from wasm_shim.shim.daemon.logfmt import LogfmtFormatter, quote


@pytest.mark.parametrize("value, expected", [
    ("127.0.0.1:9464", ("127.0.0.1", 9464)),
    ("127.1.2.3:1", ("127.1.2.3", 1)),
    ("[::1]:9464", ("::1", 9464)),
    ("localhost:65535", ("localhost", 65535)),
    ("unix:/run/wasm-shim/metrics.sock", "/run/wasm-shim/metrics.sock"),
    ("unix:///run/m.sock", "/run/m.sock"),
])
def test_metrics_address_accepts_loopback_and_unix(value, expected):
    assert parse_metrics_address(value) == expected
    assert ShimConfig().merged({"metrics_address": value}, "test").metrics_address == value


@pytest.mark.parametrize("value, reason", [
    ("0.0.0.0:9464", "not a loopback address"),
    ("10.1.2.3:9464", "not a loopback address"),
    ("[::]:9464", "not a loopback address"),
    ("example.com:9464", "not an IP address"),
    ("127.0.0.1:0", "not in 1..65535"),
    ("127.0.0.1:70000", "not in 1..65535"),
    ("127.0.0.1:http", "not in 1..65535"),
    ("9464", "expected 127.0.0.1:PORT"),
    ("unix:relative.sock", "absolute path"),
])
def test_metrics_address_refuses_the_network_with_a_clear_error(value, reason):
    with pytest.raises(ConfigError, match=reason) as info:
        load_config(environ={"WASM_SHIM_CONFIG": "", "WASM_SHIM_METRICS_ADDRESS": value})
    assert "environment" in str(info.value) and repr(value) in str(info.value)


def test_metrics_are_off_by_default():
    assert load_config(environ={"WASM_SHIM_CONFIG": ""}).metrics_address == ""


@pytest.mark.parametrize("good", ["t1", "abc-def_1.2", "a" * 76, "0123456789abcdef" * 4, "X.y-Z_0"])
def test_ids_containerd_accepts(good):
    assert id_problem(good) is None


@pytest.mark.parametrize("bad", ["", "a" * 77, "../x", "a/b", "/", "..", ".", "a..b", "-a", "a-", "a\x00b", "a b",
                                 "a\nb", "ä", "a:b"])
def test_ids_containerd_refuses(bad):
    assert id_problem(bad)


def _record(msg: str, *args: object, exc: bool = False, **extra: str) -> logging.LogRecord:
    exc_info = None
    if exc:
        try:
            raise ValueError("boom\nsecond line")
        except ValueError:
            exc_info = sys.exc_info()
    record = logging.LogRecord("wasm_shim", logging.INFO, __file__, 1, msg, args, exc_info)
    record.__dict__.update(extra)
    return record


def test_logfmt_lines():
    line = LogfmtFormatter().format(_record("task exited with status %d", 0, task="t1", namespace="k8s.io"))
    assert line.startswith("time=") and line.endswith(f" runtime=wasm-shim pid={_record('x').process}")
    assert ' level=info msg="task exited with status 0" task=t1 namespace=k8s.io runtime=' in line
    plain = LogfmtFormatter().format(_record("ready"))
    assert " msg=ready runtime=" in plain and "task=" not in plain
    failed = LogfmtFormatter().format(_record("create failed", exc=True))
    assert "\n" not in failed and 'error="Traceback' in failed and "boom\\nsecond line" in failed
    assert quote('say "hi"\tnow') == '"say \\"hi\\"\\tnow"' and quote("") == '""' and quote("a=b") == '"a=b"'
    assert quote("nul\x00") == '"nul\\x00"'


@pytest.mark.asyncio
async def test_metrics_count_events_and_calls_without_a_daemon(tmp_path):
    from wasm_shim.shim.daemon.events import EventQueue
    from wasm_shim.shim.daemon.metrics import Metrics
    from wasm_shim.shim.daemon.task_service import TaskService
    from wasm_shim.shim.protos import events_pb2
    from wasm_shim.shim.ttrpc.server import CallContext
    from wasm_shim.shim.ttrpc.status import Code, RpcError

    async def sink(event: object) -> None:
        return None

    events = EventQueue(sink)
    service = TaskService([], events)
    metrics = Metrics(service, [])
    events.observe(metrics.on_event)
    events.observe(lambda event: 1 / 0)  # a failing observer costs nothing else
    events.publish("ns1", events_pb2.TaskStart(container_id="a"))
    events.publish("ns1", events_pb2.TaskOOM(container_id="a"))
    events.publish("ns2", events_pb2.TaskStart(container_id="b"))

    async def ok(payload: bytes, ctx: CallContext) -> bytes:
        return b""

    async def refused(payload: bytes, ctx: CallContext) -> bytes:
        raise RpcError(Code.NOT_FOUND, "no")

    table = metrics.timed({("svc", "Start"): ok, ("svc", "State"): refused})
    ctx = CallContext("svc", "Start", {}, None, None, None)
    await table[("svc", "Start")](b"", ctx)
    with pytest.raises(RpcError):
        await table[("svc", "State")](b"", CallContext("svc", "State", {}, None, None, None))
    parsed = {(s.name, tuple(sorted(s.labels.items()))): s.value
              for f in text_string_to_metric_families((await metrics.exposition()).decode()) for s in f.samples}
    assert parsed[("wasm_shim_instance_starts_total", (("namespace", "ns1"),))] == 1
    assert parsed[("wasm_shim_instance_starts_total", (("namespace", "ns2"),))] == 1
    assert parsed[("wasm_shim_oom_events_total", (("namespace", "ns1"),))] == 1
    assert parsed[("wasm_shim_instance_start_seconds_count", ())] == 1
    assert parsed[("wasm_shim_rpc_calls_total", (("code", "NOT_FOUND"), ("method", "State")))] == 1
    await asyncio.sleep(0)
