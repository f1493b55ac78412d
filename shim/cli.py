"""`wasm-shim`: the operator's and developer's command line.

Owns the user-facing commands that are not the containerd-facing binary: printing containerd's runtime table,
warming the compiled-module cache, and version/help. Each subcommand imports only what it needs.
"""

from __future__ import annotations

import argparse
import sys

from .binary import VERSION
from .containerd_config import HANDLER, RUNTIME_TYPE


def containerd_config(version: int, handler: str = HANDLER, options: dict[str, str] | None = None,
                      config_path: str = "") -> str:
    """The runtime table for containerd config `version` 2 (containerd 1.6/1.7) or 3 (2.x)."""
    from .containerd_config import RuntimeTable

    return RuntimeTable(version, handler, options, config_path).render()


def _cmd_containerd_config(args: argparse.Namespace) -> int:
    """Print the runtime table, or merge it into a containerd config file (backup FILE.bak, atomic, idempotent)."""
    import os
    import shutil
    import tomllib

    from .containerd_config import ConfigMergeError, RuntimeTable, merge_runtime_table

    def fail(message: str) -> int:
        sys.stderr.write(f"wasm-shim containerd-config: {message}\n")
        return 2

    options: dict[str, str] = {}
    for item in args.option or []:
        key, sep, value = item.partition("=")
        if not sep:
            return fail(f"--option needs KEY=VALUE, got {item!r}")
        options[key] = value
    version = args.config_version
    text = ""
    if args.merge:
        try:
            with open(args.merge, encoding="utf-8") as f:
                text = f.read()
        except OSError as exc:
            return fail(f"cannot read {args.merge}: {exc.strerror}")
        if version is None:
            try:
                version = tomllib.loads(text).get("version", 1)
            except tomllib.TOMLDecodeError as exc:
                return fail(f"{args.merge} is not valid TOML: {exc}")
    try:
        table = RuntimeTable(2 if version is None else version, args.handler, options, args.config_path or "")
        if not args.merge:
            sys.stdout.write(table.render())
            return 0
        merged, notes = merge_runtime_table(text, table)
    except ConfigMergeError as exc:
        return fail(f"{args.merge}: {exc}" if args.merge else str(exc))
    if merged is not None:
        backup = args.merge + ".bak"
        partial = args.merge + ".wasm-shim.partial"
        try:
            shutil.copy2(args.merge, backup)
            with open(partial, "w", encoding="utf-8") as f:
                f.write(merged)
            shutil.copymode(args.merge, partial)
            os.replace(partial, args.merge)
        except OSError as exc:
            return fail(f"cannot write {args.merge}: {exc}")
        notes.append(f"previous file saved as {backup}; restart containerd to apply")
    for note in notes:
        sys.stderr.write(f"wasm-shim containerd-config: {args.merge}: {note}\n")
    return 0


def _cmd_version(args: argparse.Namespace) -> int:
    sys.stdout.write(f"wasm-shim {VERSION} (runtime {RUNTIME_TYPE})\n")
    return 0


def _cmd_precompile(args: argparse.Namespace) -> int:
    """Warm the compiled-module cache the daemon reads: same engine, same fingerprint, same files."""
    from .config import ConfigError, load_config
    from .engines.base import EngineError
    from .engines.wasmtime import WasmtimeEngine

    try:
        cache_dir = args.cache_dir or load_config().cache_dir
        engine = WasmtimeEngine(cache_dir=cache_dir)
    except (ConfigError, EngineError) as exc:
        sys.stderr.write(f"wasm-shim precompile: {exc}\n")
        return 1
    failed = 0
    try:
        for path in args.files:
            try:
                digest, kind, source = engine.precompile(path)
            except EngineError as exc:
                sys.stderr.write(f"wasm-shim precompile: {exc}\n")
                failed += 1
                continue
            state = "compiled" if source == "compiled" else "already cached"
            sys.stdout.write(f"{path}: {kind.value} sha256:{digest} {state} in {cache_dir}/{engine.fingerprint}\n")
    finally:
        engine.close()
    return 1 if failed else 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="wasm-shim",
        description="Run WebAssembly workloads next to containers: tools for the containerd shim "
        "containerd-shim-wasmtime-v1.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    cc = sub.add_parser(
        "containerd-config",
        help="print (or --merge into a file) containerd's runtime table for the wasmtime handler",
        description="Print containerd's runtime table for the wasmtime RuntimeClass handler, or merge it into a "
        "containerd config file. Options: containerd 1.7/2.x pass inline --option keys to the shim; containerd "
        "1.6 passes only ConfigPath, so there use --config-path FILE (a TOML file with the same keys). "
        "See docs/cri.md.",
    )
    cc.add_argument("--config-version", type=int, choices=(2, 3), default=None,
                    help="containerd config version: 2 for containerd 1.6/1.7, 3 for 2.x (default: the merged "
                    "file's, else 2)")
    cc.add_argument("--handler", default=HANDLER, help="runtime handler name (the RuntimeClass handler)")
    cc.add_argument("--option", action="append", metavar="KEY=VALUE",
                    help="a shim option for the options table (e.g. grouping=pod); repeatable; containerd 1.7+")
    cc.add_argument("--config-path", metavar="FILE",
                    help="emit ConfigPath = FILE instead of inline options (the only form containerd 1.6 passes)")
    cc.add_argument("--merge", metavar="FILE",
                    help="merge the table into this containerd config file (backup FILE.bak; no change if it is "
                    "already there)")
    cc.set_defaults(func=_cmd_containerd_config)
    pre = sub.add_parser("precompile", help="compile modules/components into the daemon's on-disk cache")
    pre.add_argument("files", nargs="+", metavar="FILE", help=".wasm core modules or components")
    pre.add_argument("--cache-dir", help="the cache directory (default: cache_dir of the shim config, "
                     "/var/lib/wasm-shim/cache; must be 0700 and ours)")
    pre.set_defaults(func=_cmd_precompile)
    ver = sub.add_parser("version", help="print the version")
    ver.set_defaults(func=_cmd_version)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    result: int = args.func(args)
    return result


if __name__ == "__main__":
    sys.exit(main())
