"""`wasm-shim`: the operator's and developer's command line.

Owns the user-facing commands that are not the containerd-facing binary: printing containerd's runtime table,
warming the compiled-module cache, and version/help. Each subcommand imports only what it needs.
"""

from __future__ import annotations

import argparse
import sys

from .binary import VERSION

RUNTIME_TYPE = "io.containerd.wasmtime.v1"
HANDLER = "wasmtime"

_CRI_PLUGIN = {
    2: 'plugins."io.containerd.grpc.v1.cri".containerd.runtimes',
    3: 'plugins."io.containerd.cri.v1.runtime".containerd.runtimes',
}


def containerd_config(version: int, handler: str = HANDLER, options: dict[str, str] | None = None) -> str:
    """The runtime table for containerd config `version` 2 (containerd 1.6/1.7) or 3 (2.x)."""
    if version not in _CRI_PLUGIN:
        raise ValueError(f"containerd config version must be 2 (containerd 1.6/1.7) or 3 (2.x), not {version}")
    table = f"[{_CRI_PLUGIN[version]}.{handler}]"
    lines = [table, f'  runtime_type = "{RUNTIME_TYPE}"']
    if options:
        lines.append(f"[{_CRI_PLUGIN[version]}.{handler}.options]")
        for key, value in options.items():
            lines.append(f'  {key} = "{value}"')
    return "\n".join(lines) + "\n"


def _cmd_containerd_config(args: argparse.Namespace) -> int:
    options = {}
    for item in args.option or []:
        key, sep, value = item.partition("=")
        if not sep:
            sys.stderr.write(f"wasm-shim: --option needs KEY=VALUE, got {item!r}\n")
            return 2
        options[key] = value
    sys.stdout.write(containerd_config(args.config_version, args.handler, options))
    return 0


def _cmd_version(args: argparse.Namespace) -> int:
    sys.stdout.write(f"wasm-shim {VERSION} (runtime {RUNTIME_TYPE})\n")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="wasm-shim",
        description="Run WebAssembly workloads next to containers: tools for the containerd shim "
        "containerd-shim-wasmtime-v1.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    cc = sub.add_parser("containerd-config", help="print containerd's runtime table for the wasmtime handler")
    cc.add_argument("--config-version", type=int, choices=(2, 3), default=2,
                    help="containerd config version: 2 for containerd 1.6/1.7, 3 for 2.x (default 2)")
    cc.add_argument("--handler", default=HANDLER, help="runtime handler name (the RuntimeClass handler)")
    cc.add_argument("--option", action="append", metavar="KEY=VALUE",
                    help="a shim option for the options table (e.g. grouping=pod); repeatable")
    cc.set_defaults(func=_cmd_containerd_config)
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
