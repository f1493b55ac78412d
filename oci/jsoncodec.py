"""JSON for the registry side: `loads` without importing the `json` package on the way, and `dumps` through it.

Owns `loads` and `dumps`. `import json` imports `re` (and with it `enum`, `functools`, `collections`): about 7 ms
that every `wasm-shim pull` would pay before its first request, for documents the interpreter's own C scanner
(`_json.make_scanner`, the one `json.loads` runs) reads just as well. So `loads` drives that scanner directly,
exactly as `json.JSONDecoder` configures it (strict, no hooks, NaN and Infinity as json reads them), and hands
anything it does not accept outright to `json.loads` itself: so every value `loads` returns is the value `json.loads`
returns for the same bytes, and every document `json.loads` refuses is refused with json's own JSONDecodeError
(a ValueError). `dumps` (writing is the push, sign and login paths') is json's.
"""

from __future__ import annotations

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

_WHITESPACE = " \t\n\r"  # json.decoder.WHITESPACE
_CONSTANTS = {"-Infinity": float("-inf"), "Infinity": float("inf"), "NaN": float("nan")}


class _Context:
    """What `_json.make_scanner` reads from a JSONDecoder: json's defaults."""

    strict = True
    object_hook = None
    object_pairs_hook = None
    parse_float = float
    parse_int = int
    parse_constant = _CONSTANTS.__getitem__


_scanner: list[Any] = []  # the C scanner, made once ([None]: this interpreter has none)


def _scan() -> Any:
    if not _scanner:
        try:
            import _json
        except ImportError:  # an interpreter without the C accelerator: json's own code
            _scanner.append(None)
        else:
            make: Any = _json.make_scanner  # typeshed wants a JSONDecoder; it reads only _Context's attributes
            _scanner.append(make(_Context()))
    return _scanner[0]


def _slow(data: bytes | str) -> Any:
    import json

    return json.loads(data)


def loads(data: bytes | str) -> Any:
    """`json.loads(data)`, without importing json for a document in UTF-8 that parses (see the module docstring)."""
    scan = _scan()
    if scan is None:
        return _slow(data)
    if isinstance(data, bytes | bytearray):
        head = bytes(data[:4])
        if b"\0" in head or head.startswith((b"\xef\xbb\xbf", b"\xff\xfe", b"\xfe\xff")):
            return _slow(data)  # a byte order mark or UTF-16/32: json.loads detects those (RFC 8259 section 8.1)
        try:
            text = bytes(data).decode("utf-8", "surrogatepass")
        except UnicodeDecodeError:
            return _slow(data)
    else:
        text = data
        if text.startswith("\ufeff"):
            return _slow(data)
    position, length = 0, len(text)
    while position < length and text[position] in _WHITESPACE:
        position += 1
    try:
        value, end = scan(text, position)
    except (StopIteration, ValueError, RecursionError):
        return _slow(data)
    while end < length and text[end] in _WHITESPACE:
        end += 1
    if end != length:
        return _slow(data)  # "Extra data"
    return value


def dumps(value: object, **options: Any) -> str:
    import json

    return json.dumps(value, **options)
