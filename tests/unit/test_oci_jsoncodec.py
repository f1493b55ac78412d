"""JSON without the json package on the way (oci/jsoncodec.py): whatever bytes come, `loads` gives what
`json.loads` gives, or fails as it fails; and a well-formed UTF-8 document is read without importing json.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from wasm_shim.oci.jsoncodec import loads

PKGROOT = Path(__file__).resolve().parents[2] / ".tools" / "pkgroot"  # the lean launchers' import root (setup.sh)
SETTINGS = settings(max_examples=400, derandomize=True, database=None, deadline=None,
                    suppress_health_check=list(HealthCheck))

values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=6), children, max_size=4),
    max_leaves=20,
)


def outcome(function, data):  # type: ignore[no-untyped-def]
    try:
        return "value", function(data)
    except ValueError as exc:
        return "error", type(exc).__name__, str(exc)
    except RecursionError:
        return "recursion",


@SETTINGS
@given(values, st.sampled_from(["", " ", "\n\t ", "\r\n"]), st.booleans())
def test_documents_read_as_json_reads_them(value: object, space: str, as_bytes: bool) -> None:
    text = space + json.dumps(value, ensure_ascii=False, indent=1 if space else None) + space
    data = text.encode() if as_bytes else text
    assert loads(data) == json.loads(data)


@SETTINGS
@given(st.one_of(
    st.binary(max_size=64),
    st.text(max_size=64).map(str.encode),
    values.map(lambda v: json.dumps(v).encode()).flatmap(
        lambda doc: st.tuples(st.integers(0, len(doc)), st.binary(max_size=8)).map(
            lambda cut: doc[:cut[0]] + cut[1] + doc[cut[0]:])),
    st.sampled_from([b"\xef\xbb\xbf{}", '{"a":1}'.encode("utf-16"), '[1]'.encode("utf-32-le"), b"NaN",
                     b"[Infinity, -Infinity]", b"{} {}", b"\"\x01\"", b"[" * 100_000, b"\xff", b"1e999"]),
))
def test_any_bytes_end_as_they_end_in_json(data: bytes) -> None:
    ours, theirs = outcome(loads, data), outcome(json.loads, data)
    if ours[0] == "value" and theirs[0] == "value" and ours != theirs:  # NaN is not equal to itself
        assert json.dumps(ours[1]) == json.dumps(theirs[1])
    else:
        assert ours == theirs


def test_constants_as_json_reads_them() -> None:
    assert math.isnan(loads(b"NaN")) and loads(b"[Infinity]") == [float("inf")]


def test_a_well_formed_document_is_read_without_importing_json() -> None:
    code = (f"import sys\nsys.path.insert(0, {str(PKGROOT)!r})\nfrom wasm_shim.oci.jsoncodec import loads\n"
            "assert loads(b'{\"schemaVersion\": 2, \"layers\": [{\"size\": 1.5e3}]}') == "
            "{'schemaVersion': 2, 'layers': [{'size': 1500.0}]}\n"
            "print(sorted(m for m in sys.modules if m == 'json' or m.startswith('json.') or m == 're'))\n")
    done = subprocess.run([sys.executable, "-I", "-S", "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


@pytest.mark.parametrize("data", [b"{", b"[1,]", b"{} x", b"\x80"])
def test_errors_are_json_s_own(data: bytes) -> None:
    with pytest.raises(ValueError) as ours:
        loads(data)
    with pytest.raises(ValueError) as theirs:
        json.loads(data)
    assert (type(ours.value), str(ours.value)) == (type(theirs.value), str(theirs.value))
