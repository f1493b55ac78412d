"""merge / unmerge: pure text edits of an operator's containerd config (no files, no containerd).

The merge record is what the installer keeps; `unmerge` must take exactly our block out of the file as it is
later, whatever the operator did around it, and refuse (changing nothing) when a line edit cannot do that.
"""

from __future__ import annotations

import tomllib

import pytest

from wasm_shim.shim.node.containerd_config import ConfigMergeError, RuntimeTable, merge, merge_runtime_table, unmerge

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


V2_RUNTIMES = 'plugins."io.containerd.grpc.v1.cri".containerd.runtimes'
TABLE = RuntimeTable(version=2, config_path="/opt/wasm-shim/config.toml")
MIRROR = ('[plugins."io.containerd.grpc.v1.cri".registry.mirrors."docker.io"]\n'
          '  endpoint = ["https://mirror.example.com"]\n')
#: Operator edits after a merge, each as (what they did to the merged text, what the original becomes).
EDITS = {
    "mirror appended after our block": (lambda t: t + "\n# mirror\n" + MIRROR,
                                        lambda o: o + "\n# mirror\n" + MIRROR),
    "mirror right after our last line": (lambda t: t + MIRROR, lambda o: o + MIRROR),
    "comment on top, value changed": (lambda t: "# mine\n" + t.replace('"runc"\n', '"runc"  # default\n', 1),
                                      lambda o: "# mine\n" + o.replace('"runc"\n', '"runc"  # default\n', 1)),
    "table inserted before ours": (lambda t: t.replace("\n# Added by", "\n[debug]\n  level = 'info'\n# Added by"),
                                   lambda o: o + "\n[debug]\n  level = 'info'\n"),
    "CRLF lines of the operator's": (lambda t: t + "[timeouts]\r\n  x = '1s'\r\n",
                                     lambda o: o + "[timeouts]\r\n  x = '1s'\r\n"),
}


@pytest.mark.parametrize("edit", sorted(EDITS))
def test_unmerge_takes_out_exactly_the_block_whatever_was_edited_around_it(edit: str) -> None:
    merged = merge(V2_CONFIG, TABLE)
    assert merged.text is not None and merged.record is not None
    to_merged, to_original = EDITS[edit]
    result = unmerge(to_merged(merged.text), merged.record)
    assert result.text == to_original(V2_CONFIG)
    assert result.kept == []
    assert result.notes == [f"removed [{V2_RUNTIMES}.wasmtime] (added by install)"]


def test_unmerge_of_an_unedited_file_gives_back_its_bytes_including_a_missing_final_newline() -> None:
    original = "version = 3\n[plugins.'io.containerd.cri.v1.runtime'.cni]\n  conf_dir = '/etc/cni/net.d'"
    merged = merge(original, RuntimeTable(version=3, config_path="/opt/x.toml"))
    assert merged.text is not None and merged.record is not None and merged.record.newline_added
    assert merged.record.runc  # no runtime declared: the merge added runc
    assert unmerge(merged.text, merged.record).text == original


def test_a_table_the_merge_replaced_is_put_back_where_it_was() -> None:
    theirs = (f'# runwasi, before us\n[{V2_RUNTIMES}.wasmtime]\n  runtime_type = "io.containerd.wasmtime.v1"\n'
              f'[{V2_RUNTIMES}.wasmtime.options]\n  SystemdCgroup = true\n')
    original = V2_CONFIG.replace("# the operator's comment stays\n", theirs) + "[debug]\n  level = 'info'\n"
    merged = merge(original, TABLE)
    assert merged.text is not None and merged.record is not None
    assert merged.notes[0] == f"replaced the existing [{V2_RUNTIMES}.wasmtime] in place"
    assert merged.text.index("# Added by") < merged.text.index("[debug]")  # in place, not appended
    assert merged.record.replaced == theirs.split("\n", 1)[1]  # its lines (the comment above stays in the file)
    edited = merged.text + MIRROR
    result = unmerge(edited, merged.record)
    assert result.text == original + MIRROR
    assert "put back the" in result.notes[0]


def test_a_changed_table_of_ours_is_kept_and_named() -> None:
    merged = merge(V2_CONFIG, TABLE)
    assert merged.text is not None and merged.record is not None
    changed = merged.text.replace('ConfigPath = "/opt/wasm-shim/config.toml"', 'ConfigPath = "/etc/mine.toml"')
    result = unmerge(changed, merged.record)
    assert result.text == changed
    assert result.kept == [f"[{V2_RUNTIMES}.wasmtime] was changed since install: left as it is (remove it by hand "
                           "once no pod uses handler wasmtime)"]


def test_the_runc_table_stays_while_other_runtimes_are_declared() -> None:
    original = 'version = 2\n[plugins."io.containerd.grpc.v1.cri"]\n  sandbox_image = "pause"\n'
    merged = merge(original, TABLE)
    assert merged.text is not None and merged.record is not None and merged.record.runc
    crun = f'[{V2_RUNTIMES}.crun]\n  runtime_type = "io.containerd.runc.v2"\n'
    result = unmerge(merged.text + crun, merged.record)
    assert set(_runtimes(result.text)) == {"runc", "crun"}
    assert "which need the default runtime declared beside them" in result.notes[0]
    assert unmerge(merged.text, merged.record).text == original  # alone, it goes with ours


def test_a_line_edit_that_would_change_anything_else_is_refused() -> None:
    # A multi-line string holding a line that looks like our header: the textual split takes it for our table,
    # and removing it would change the operator's string. The check by parsing catches it; nothing is edited.
    merged = merge(V2_CONFIG, TABLE)
    assert merged.text is not None and merged.record is not None
    tricky = merged.text + f'[notes]\n  text = """\n[{V2_RUNTIMES}.wasmtime]\nnot a table\n[more]\n"""\n'
    with pytest.raises(ConfigMergeError, match="would change other settings; the file was left as it is"):
        unmerge(tricky, merged.record)


def test_unmerge_of_a_file_that_no_longer_parses_is_refused() -> None:
    merged = merge(V2_CONFIG, TABLE)
    assert merged.text is not None and merged.record is not None
    with pytest.raises(ConfigMergeError, match="does not parse as TOML now; nothing of ours was removed"):
        unmerge(merged.text + "[broken\n", merged.record)


def test_the_merge_record_survives_json() -> None:
    merged = merge(V2_CONFIG, TABLE)
    assert merged.record is not None
    from wasm_shim.shim.node.containerd_config import MergeRecord

    assert MergeRecord.from_json(merged.record.as_json()) == merged.record
    with pytest.raises(ConfigMergeError, match="damaged"):
        MergeRecord.from_json({"table": 3})
