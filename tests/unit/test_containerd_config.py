"""merge_runtime_table: a pure text edit of an operator's containerd config (no files, no containerd)."""

from __future__ import annotations

import tomllib

import pytest

from wasm_shim.shim.node.containerd_config import ConfigMergeError, RuntimeTable, merge_runtime_table

V2_CONFIG = """\
version = 2
# the operator's comment stays
[plugins."io.containerd.grpc.v1.cri".containerd]
  default_runtime_name = "runc"
[plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
  runtime_type = "io.containerd.runc.v2"
"""


def _runtimes(text: str, plugin: str = "io.containerd.grpc.v1.cri") -> dict:  # type: ignore[type-arg]
    return tomllib.loads(text)["plugins"][plugin]["containerd"]["runtimes"]


def test_merge_adds_the_table_and_keeps_everything_else() -> None:
    table = RuntimeTable(version=2, config_path="/etc/wasm-shim/config.toml")
    text, notes = merge_runtime_table(V2_CONFIG, table)
    assert text is not None and text.startswith(V2_CONFIG)  # every line of the operator's file, unchanged
    runtimes = _runtimes(text)
    assert runtimes["wasmtime"] == table.as_data()
    assert runtimes["runc"] == {"runtime_type": "io.containerd.runc.v2"}
    assert notes == ['added [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.wasmtime]']


def test_merge_is_idempotent_and_replaces_a_changed_table() -> None:
    first, _ = merge_runtime_table(V2_CONFIG, RuntimeTable(version=2))
    assert first is not None
    again, notes = merge_runtime_table(first, RuntimeTable(version=2))
    assert again is None and notes == ['[plugins."io.containerd.grpc.v1.cri".containerd.runtimes.wasmtime] is '
                                       "already up to date"]
    changed = RuntimeTable(version=2, config_path="/etc/other.toml")
    replaced, notes = merge_runtime_table(first, changed)
    assert replaced is not None and _runtimes(replaced)["wasmtime"] == changed.as_data()
    assert notes[0].startswith("replaced the existing ")
    assert replaced.count("runtimes.wasmtime]") == 1  # the old table was dropped, not shadowed


def test_declaring_a_runtime_keeps_the_default_runc() -> None:
    # Declaring any runtime replaces containerd's built-in map: without `runc` there, CRI refuses to load.
    text, notes = merge_runtime_table("version = 3\n", RuntimeTable(version=3))
    assert text is not None
    runtimes = _runtimes(text, "io.containerd.cri.v1.runtime")
    assert set(runtimes) == {"wasmtime", "runc"} and runtimes["runc"]["runtime_type"] == "io.containerd.runc.v2"
    assert any("the default runtime" in note for note in notes)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("version = [", "not valid TOML"),
        ("[plugins]\n", "config version 1, not 2; version 1 .* not supported"),
        ("version = 3\n", "config version 3, not 2; it is for containerd 2.x: use --config-version 3"),
        ('version = 2\n[plugins."io.containerd.grpc.v1.cri".containerd.runtimes]\n'
         'wasmtime = { runtime_type = "x" }\n', "defined inline or with dotted keys"),
    ],
)
def test_files_it_cannot_edit_safely_are_refused(text: str, message: str) -> None:
    with pytest.raises(ConfigMergeError, match=message):
        merge_runtime_table(text, RuntimeTable(version=2))
