"""`wasm-shim`: the operator's and developer's command line.

Owns the user-facing commands that are not the containerd-facing binary: printing containerd's runtime table,
warming the compiled-module cache, installing onto a node (`node`), building the node bundle (`bundle`),
and version/help; the registry, signing and attestation commands (push, pull, tags, login, logout,
generate-key-pair, sign, verify, attest, verify-attestation) are in registry.py, parsed by options.py. Each
subcommand imports only what it needs: `main` sends the registry commands and --version on before argparse or
anything of the node side is imported (tests/integration/test_cli_imports.py holds it to that).
"""

from __future__ import annotations

import os
import sys

TYPE_CHECKING = False
if TYPE_CHECKING:
    import argparse
    from typing import NoReturn

RUNTIME_TYPE = "io.containerd.wasmtime.v1"  # node/containerd_config.py's, spelled here so --version imports nothing


def version_text() -> str:
    from ..launch.binary import VERSION

    return f"wasm-shim {VERSION} (runtime {RUNTIME_TYPE})"


def containerd_config(version: int, handler: str = "", options: dict[str, str] | None = None,
                      config_path: str = "") -> str:
    """The runtime table for containerd config `version` 2 (containerd 1.6/1.7) or 3 (2.x)."""
    from ..node.containerd_config import HANDLER, RuntimeTable

    handler = handler or HANDLER
    return RuntimeTable(version, handler, options, config_path).render()


def _cmd_containerd_config(args: argparse.Namespace) -> int:
    """Print the runtime table, or merge it into a containerd config file (backup FILE.bak, atomic, idempotent)."""
    import shutil
    import tomllib

    from ..node.containerd_config import ConfigMergeError, RuntimeTable, merge_runtime_table

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
        table = RuntimeTable(2 if version is None else version, args.handler, options, args.config_path or "",
                             sandboxer=args.sandboxer or "")
        if not args.merge:
            sys.stdout.write(table.render())
            return 0
        merged, notes = merge_runtime_table(text, table)
    except ConfigMergeError as exc:
        return fail(f"{args.merge}: {exc}" if args.merge else str(exc))
    if merged is not None:
        from ..node.installer import write_atomic  # the installer's write too: one way to replace a config

        backup = args.merge + ".bak"
        try:
            shutil.copy2(args.merge, backup)
            write_atomic(args.merge, merged.encode("utf-8"), mode_from=args.merge)
        except OSError as exc:
            return fail(f"cannot write {args.merge}: {exc}")
        notes.append(f"previous file saved as {backup}; restart containerd to apply")
    for note in notes:
        sys.stderr.write(f"wasm-shim containerd-config: {args.merge}: {note}\n")
    return 0


def _cmd_version(args: argparse.Namespace) -> int:
    sys.stdout.write(version_text() + "\n")
    return 0


def _cmd_metrics(args: argparse.Namespace) -> int:
    """The node's one metrics endpoint over every daemon's socket in --dir (shim/daemon/metrics_node.py)."""
    import asyncio
    import logging
    import signal

    from ..daemon.metrics_node import parse_listen, serve

    try:
        parse_listen(args.listen)
    except ValueError as exc:
        sys.stderr.write(f"wasm-shim metrics: {exc}\n")
        return 2
    if not os.path.isabs(args.dir):
        sys.stderr.write(f"wasm-shim metrics: --dir {args.dir!r} must be an absolute path\n")
        return 2
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")

    async def run() -> None:
        task = asyncio.current_task()
        assert task is not None
        for sig in (signal.SIGTERM, signal.SIGINT):
            asyncio.get_running_loop().add_signal_handler(sig, task.cancel)
        try:
            await serve(args.dir, args.listen)
        except asyncio.CancelledError:
            pass

    try:
        asyncio.run(run())
    except OSError as exc:
        sys.stderr.write(f"wasm-shim metrics: cannot listen on {args.listen}: {exc.strerror or exc}\n")
        return 1
    return 0


def _cmd_precompile(args: argparse.Namespace) -> int:
    """Warm the compiled-module cache the daemon reads: same engine, same fingerprint, same files."""
    from ..config import ConfigError, load_config
    from ..engines.base import EngineError
    from ..engines.wasmtime import WasmtimeEngine

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


def _shim_options(items: list[str] | None) -> dict[str, str]:
    options: dict[str, str] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep:
            raise ValueError(f"--option needs KEY=VALUE, got {item!r}")
        options[key] = value
    return options


def _cmd_node(args: argparse.Namespace) -> int:
    """Install, uninstall or inspect the shim on the node whose / is mounted at --host-root."""
    import json
    import os

    from ..node.build import BuildError
    from ..node.distributions import InstallError
    from ..node.installer import Node, Options, Reporter

    if args.action == "check-log":
        return _cmd_check_log(args)
    if args.action == "delete-daemonset":
        return _cmd_delete_daemonset(args)
    try:
        options = Options(
            host_root=args.host_root, node_root=args.node_root, prefix=args.prefix, bin_dir=args.bin_dir,
            bundle=args.bundle or "", layout=args.layout or "", containerd_config=args.containerd_config or "",
            config_version=args.config_version, shim_options=_shim_options(args.option),
            restart=not args.no_restart, restart_command=args.restart_command or "", cri_socket=args.cri_socket or "",
            restart_timeout=args.restart_timeout, policy_dir=args.policy_dir or "", handler=args.handler,
            runtime_type=args.runtime_type, shim_binary=args.shim_binary or "",
            warm_timeout=args.warm_timeout,
        )
        node = Node(options)
    except (ValueError, InstallError) as exc:
        sys.stderr.write(f"wasm-shim node {args.action}: {exc}\n")
        return 2
    if args.action == "status":
        status = node.status()
        sys.stdout.write(json.dumps(status, indent=2, sort_keys=True) + "\n")
        if args.check and not (status["installed"] and status.get("config_as_installed")):
            return 1
        return 0
    reporter = Reporter()
    kube = None
    node_name = args.node_name or os.environ.get("NODE_NAME", "")
    if node_name and not args.no_report:
        from ..node.report import KubeReporter

        try:
            reporter = kube = KubeReporter(node_name, namespace=args.namespace, kubeconfig=args.kubeconfig or "",
                                           events_namespace=args.event_namespace, handler=args.handler)
        except ImportError as exc:
            sys.stderr.write(f"wasm-shim node {args.action}: the kubernetes client is not here ({exc}): run the "
                             "installer image's wasm-shim, or pass --no-report\n")
            return 2
        except Exception as exc:  # kubernetes.config.ConfigException and what loading a kubeconfig raises
            sys.stderr.write(f"wasm-shim node {args.action}: cannot use the Kubernetes API to label node "
                             f"{node_name}: {exc}; pass --no-report to install without it\n")
            return 2
        if args.restart_slots:
            from ..node.restart_slots import RestartSlots

            try:
                # A slot outlives a restart that takes the whole timeout, twice (the rollback restarts again).
                node = Node(options, slots=RestartSlots(
                    args.restart_slots, args.max_concurrent_restarts, args.namespace, node_name,
                    duration=int(2 * args.restart_timeout) + 120))
            except InstallError as exc:
                sys.stderr.write(f"wasm-shim node {args.action}: {exc}\n")
                return 2
    import signal

    if args.action == "run":
        # Blocked from the start: a SIGTERM during the install waits for it to finish (no half-installed node),
        # then is taken by sigwait below.
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM, signal.SIGINT})
    try:
        if args.action == "uninstall":
            return node.uninstall(reporter)
        result = node.install(reporter)
        if args.action == "install" or result != 0:
            return result
    except BuildError as exc:
        sys.stderr.write(f"wasm-shim node {args.action}: {exc}\n")
        reporter.failed(str(exc))
        return 1
    # run: stay up (a DaemonSet pod) until asked to stop; then uninstall only when the DaemonSet is going away.
    signum = signal.sigwait({signal.SIGTERM, signal.SIGINT})
    sys.stdout.write(f"wasm-shim node: {signal.Signals(signum).name}\n")
    if args.uninstall_on_delete and kube is not None and kube.daemonset_going(args.uninstall_on_delete):
        sys.stdout.write(f"wasm-shim node: DaemonSet {args.uninstall_on_delete} is being deleted: uninstalling\n")
        return Node(options, slots=node.s.slots).uninstall(reporter)
    sys.stdout.write("wasm-shim node: leaving the node installed (the DaemonSet stays: upgrade or eviction)\n")
    return 0


def _cmd_delete_daemonset(args: argparse.Namespace) -> int:
    from ..node.report import delete_daemonset

    if not args.daemonset:
        sys.stderr.write("wasm-shim node delete-daemonset: --daemonset NAME is required\n")
        return 2
    problem = delete_daemonset(args.daemonset, args.namespace, args.timeout, args.kubeconfig or "")
    return _node_outcome("delete-daemonset", problem, f"{args.namespace}/{args.daemonset} and its pods are gone")


def _cmd_check_log(args: argparse.Namespace) -> int:
    from ..node.report import check_log

    problem = check_log(args.pod, args.namespace, args.expect, args.timeout, args.kubeconfig or "")
    return _node_outcome("check-log", problem, f"{args.namespace}/{args.pod} succeeded and logged {args.expect!r}")


def _node_outcome(command: str, problem: str, done: str) -> int:
    """Exit status 1 with `problem` on stderr, or 0 with `done` on stdout, each prefixed with the command."""
    if problem:
        sys.stderr.write(f"wasm-shim node {command}: {problem}\n")
        return 1
    sys.stdout.write(f"wasm-shim node {command}: {done}\n")
    return 0


def _cmd_bundle(args: argparse.Namespace) -> int:
    """Build the self-contained node bundle from this interpreter, its packages and the clone."""
    import json
    import os
    import shutil

    from ..node.build import BuildError, build, floor_source

    repo = os.path.dirname(os.path.dirname(os.path.dirname(os.path.realpath(__file__))))  # shim/cli/ -> the clone
    search = os.path.dirname(sys.executable) + os.pathsep + os.environ["PATH"]
    runner = args.runner or ("" if args.floor else shutil.which("wasm-shim-component-runner", path=search) or "")
    # Static programs (no glibc symbols): the same files serve the floor bundle.
    holder = shutil.which("wasm-shim-sandbox-holder", path=search) or ""
    # The venv's copy (setup.sh puts the real file there, in front of its .py launcher).
    fast_start = os.path.join(os.path.dirname(sys.executable), "containerd-shim-wasmtime-v1")
    try:
        source = None
        if args.floor:
            source = floor_source(os.path.join(repo, ".tools", "bundle-floor") if args.floor is True else args.floor)
        info = build(args.out, repo=repo, runner=os.path.realpath(runner) if runner else "",
                     holder=os.path.realpath(holder) if holder else "", fast_start=fast_start, source=source)
    except (BuildError, OSError) as exc:
        sys.stderr.write(f"wasm-shim bundle build: {exc}\n")
        return 1
    sys.stdout.write(json.dumps(info, indent=2, sort_keys=True) + "\n")
    return 0


def _cmd_image(args: argparse.Namespace) -> int:
    """Build the installer image (OCI layout tarball) or a Docker build context of the same files."""
    from pathlib import Path

    from ..node.build import BuildError
    from ..node.image import build_tar, write_context

    try:
        if args.action == "build":
            digest = build_tar(Path(args.bundle), Path(args.test_wasm), Path(args.out), args.ref)
            sys.stdout.write(f"{args.out}: {args.ref} {digest}\n")
        else:
            write_context(Path(args.bundle), Path(args.test_wasm), Path(args.out))
            sys.stdout.write(f"{args.out}: Docker build context (docker build -t {args.ref} {args.out})\n")
    except (BuildError, OSError, ValueError) as exc:
        sys.stderr.write(f"wasm-shim image {args.action}: {exc}\n")
        return 1
    return 0


REGISTRY_COMMANDS = frozenset({"push", "pull", "tags", "login", "logout", "generate-key-pair", "sign", "verify",
                               "attest", "verify-attestation"})


def build_parser() -> argparse.ArgumentParser:
    import argparse

    from ..launch.binary import VERSION
    from ..node.containerd_config import HANDLER

    class VersionAction(argparse.Action):
        """`--version`, whose text is computed only when asked for."""

        def __init__(self, option_strings: list[str], dest: str = argparse.SUPPRESS, **kwargs: object) -> None:
            super().__init__(option_strings, dest, nargs=0, help="print the version and exit")

        def __call__(self, parser: argparse.ArgumentParser, *_: object) -> None:
            sys.stdout.write(version_text() + "\n")
            parser.exit()

    parser = argparse.ArgumentParser(
        prog="wasm-shim",
        description="Run WebAssembly workloads next to containers: tools for the containerd shim "
        "containerd-shim-wasmtime-v1.",
    )
    parser.add_argument("--version", action=VersionAction)
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
    cc.add_argument("--sandboxer", choices=("shim", "podsandbox"),
                    help="containerd 2.x only: who makes each pod's sandbox; shim (the default: the shim holds the "
                    "pod's namespaces, no pause container) or podsandbox (CRI's pause container, run by the shim "
                    "through runc)")
    cc.add_argument("--merge", metavar="FILE",
                    help="merge the table into this containerd config file (backup FILE.bak; no change if it is "
                    "already there)")
    cc.set_defaults(func=_cmd_containerd_config)
    pre = sub.add_parser("precompile", help="compile modules/components into the daemon's on-disk cache")
    pre.add_argument("files", nargs="+", metavar="FILE", help=".wasm core modules or components")
    pre.add_argument("--cache-dir", help="the cache directory (default: cache_dir of the shim config, "
                     "/var/lib/wasm-shim/cache; must be 0700 and ours)")
    pre.set_defaults(func=_cmd_precompile)
    node = sub.add_parser(
        "node", help="install, uninstall or inspect the shim on a Kubernetes node (what the chart's DaemonSet runs)",
        description="Put the bundle on the node whose / is at --host-root, add the wasmtime runtime to its "
        "containerd config (backup of the original bytes), restart containerd through the host's init and wait "
        "for CRI, and label the node wasm.shim.io/runtime=ready (or failed, with the reason). Layouts: containerd "
        "1.6/1.7 (config version 2), 2.x (3), k3s, rke2, microk8s, k0s; detected unless --layout names one. "
        "uninstall puts every byte back. See docs/node-install.md.",
    )
    node.add_argument("action", choices=("install", "uninstall", "status", "run", "check-log", "delete-daemonset"),
                      help="run = install, then wait for SIGTERM (the DaemonSet's container); check-log = the "
                      "helm test's checker (--pod, --namespace, --expect); delete-daemonset = the chart's "
                      "pre-delete hook (--daemonset, --namespace, --timeout)")
    node.add_argument("--host-root", default="/host", help="where the node's / is mounted (default /host)")
    node.add_argument("--node-root", default="/", help="the same directory as the node's own processes name it "
                      "(default /; a fixture root in tests, where containerd runs beside the installer)")
    node.add_argument("--prefix", default="/opt/wasm-shim", help="node path of the install (versions/, current, "
                      "state; default /opt/wasm-shim)")
    node.add_argument("--bin-dir", default="/usr/local/bin", help="node directory on containerd's PATH for the "
                      "shim binary link (default /usr/local/bin)")
    node.add_argument("--bundle", help="the bundle directory to install (default: the one this wasm-shim runs from)")
    node.add_argument("--layout", choices=("containerd", "k3s", "rke2", "microk8s", "k0s"),
                      help="skip detection: the node's containerd layout")
    node.add_argument("--containerd-config", metavar="PATH", help="node path of a plain containerd's config "
                      "(default /etc/containerd/config.toml)")
    node.add_argument("--config-version", type=int, choices=(2, 3), help="k0s drop-in only: containerd config "
                      "version (default 2; other layouts read it from their file)")
    node.add_argument("--option", action="append", metavar="KEY=VALUE", help="a shim option (grouping, "
                      "idle_timeout, log_level, cache_dir, ...) for the options file containerd names in ConfigPath")
    node.add_argument("--policy-dir", metavar="DIR", help="install: the node's signature policy, DIR/policy.toml "
                      "and the key files it names (the chart mounts its signaturePolicy ConfigMap here); written to "
                      "PREFIX/policy/ and checked before the install goes on. Without it (and without --option "
                      "policy=...) an allow-all policy is written there, so a later one applies without a restart")
    node.add_argument("--handler", default=HANDLER, help="the RuntimeClass handler: the name of the runtime table "
                      f"install adds to containerd's config (default {HANDLER})")
    node.add_argument("--runtime-type", default=RUNTIME_TYPE, help="that table's runtime_type (default "
                      f"{RUNTIME_TYPE}); containerd runs containerd-shim-NAME-VERSION from its last two parts")
    node.add_argument("--shim-binary", help="the name install links the shim under in --bin-dir (default: the one "
                      "containerd derives from --runtime-type; if given, it must be that name)")
    node.add_argument("--no-restart", action="store_true", help="do not restart containerd (fixture roots, images "
                      "prepared offline)")
    node.add_argument("--restart-command", metavar="CMD", help="run CMD (shell words) instead of the layout's "
                      "restart (default: nsenter -t 1 -m -u -i -n -p -- systemctl restart containerd, or the "
                      "distribution's unit)")
    node.add_argument("--cri-socket", metavar="PATH", help="node path of containerd's socket to wait on after the "
                      "restart (default: the layout's)")
    node.add_argument("--restart-timeout", type=float, default=90.0, help="seconds to wait for CRI (default 90)")
    node.add_argument("--restart-slots", metavar="NAME", help="install, uninstall, run: restart containerd only while "
                      "holding one of the Leases NAME-0 .. NAME-(N-1) in --namespace (the chart creates them), so at "
                      "most N nodes restart at once; needs --node-name")
    node.add_argument("--max-concurrent-restarts", type=int, default=1, metavar="N",
                      help="how many of those Leases there are (default 1)")
    node.add_argument("--warm-timeout", type=float, default=0.0, metavar="SECONDS",
                      help="install: then warm the node (start its shim daemon through containerd, pull and compile "
                      "the warm_images option's images) and wait at most SECONDS for it before reporting the node "
                      "ready; problems are warnings (default 0: no warm-up)")
    node.add_argument("--node-name", help="the Node object to label (default: $NODE_NAME; none: no label)")
    node.add_argument("--event-namespace", default="default", help="namespace of the Node events (default: default, "
                      "the only one the API server allows for events about a Node)")
    node.add_argument("--kubeconfig", help="a kubeconfig instead of the in-cluster service account")
    node.add_argument("--no-report", action="store_true", help="do not touch the Node object")
    node.add_argument("--check", action="store_true", help="status: exit 1 unless installed with the config as "
                      "the installer left it (the DaemonSet's readiness probe)")
    node.add_argument("--uninstall-on-delete", metavar="DAEMONSET", help="run: on SIGTERM, uninstall if this "
                      "DaemonSet (in --namespace) is gone or being deleted")
    node.add_argument("--pod", help="check-log: the pod")
    node.add_argument("--daemonset", help="delete-daemonset: the DaemonSet")
    node.add_argument("--namespace", default="default", help="the namespace of --pod, --daemonset and "
                      "--uninstall-on-delete (default: default)")
    node.add_argument("--expect", default="", help="check-log: the text its log must hold")
    node.add_argument("--timeout", type=float, default=180.0, help="check-log, delete-daemonset: seconds to wait")
    node.set_defaults(func=_cmd_node)
    met = sub.add_parser("metrics", help="serve every shim daemon's metrics on this node as one endpoint",
                         description="serve: read each daemon's metrics from its socket in --dir (the shim option "
                         "metrics_dir) at every scrape and answer GET /metrics on --listen, each series labelled "
                         "daemon=ID (what the chart's metrics container runs). See docs/metrics.md.")
    met.add_argument("action", choices=("serve",))
    met.add_argument("--dir", default="/run/wasm-shim/metrics", help="the daemons' metrics_dir "
                     "(default /run/wasm-shim/metrics)")
    met.add_argument("--listen", default="0.0.0.0:9464", help="HOST:PORT to serve on (default 0.0.0.0:9464)")
    met.set_defaults(func=_cmd_metrics)
    bun = sub.add_parser("bundle", help="build the self-contained node bundle",
                         description="Build the node bundle (interpreter, stdlib, dependencies, our code, the "
                         "component runner) into a new directory OUT. See docs/node-install.md.")
    bun.add_argument("action", choices=("build",))
    bun.add_argument("out", metavar="OUT", help="the directory to create")
    bun.add_argument("--runner", help="the wasm-shim-component-runner binary (default: beside this interpreter, or "
                     "the floor toolchain's)")
    bun.add_argument("--floor", nargs="?", const=True, default=None, metavar="DIR",
                     help="build from the floor toolchain DIR (default .tools/bundle-floor of the clone, made by "
                     "scripts/setup.sh --with bundle-floor): CPython and wheels for an older glibc, so the bundle "
                     "runs on older nodes (docs/node-install.md, supported nodes)")
    bun.set_defaults(func=_cmd_bundle)
    img = sub.add_parser("image", help="build the installer image (OCI layout tarball) or its Docker context",
                         description="build: write the installer image (the bundle at /bundle, the helm test's "
                         "module at /test/hello.wasm) as an OCI image-layout tarball OUT, for `ctr images import` "
                         "or a registry push. context: write the same files and image/Dockerfile to directory OUT.")
    img.add_argument("action", choices=("build", "context"))
    img.add_argument("out", metavar="OUT")
    img.add_argument("--bundle", required=True, help="the bundle directory (`wasm-shim bundle build`)")
    img.add_argument("--test-wasm", required=True, help="the wasm module `helm test` runs (prints its log line)")
    img.add_argument("--ref", default=f"ghcr.io/wasm-shim/installer:{VERSION}", help="the image name")
    img.set_defaults(func=_cmd_image)
    from .registry import summaries

    for name, summary in summaries():  # listed here; main() hands them to their own parser (registry.py)
        sub.add_parser(name, help=summary, add_help=False)
    ver = sub.add_parser("version", help="print the version")
    ver.set_defaults(func=_cmd_version)
    return parser


def launch() -> NoReturn:
    """The entry of the lean launcher (scripts/setup.sh): `main`, and for the registry commands and --version an exit
    without the interpreter's finalization, which tears every module and object down one by one, milliseconds that
    every call of a script's loop would pay. Nothing is left to finish there: their files are closed, no atexit work
    is registered, no thread is started; stdout and stderr are flushed here, and a failing flush exits 120 as the
    interpreter's own would."""
    arguments = sys.argv[1:]
    if not (arguments and (arguments[0] in REGISTRY_COMMANDS or arguments == ["--version"])):
        sys.exit(main(arguments))
    try:
        code: object = main(arguments)
    except SystemExit as exc:
        code = exc.code
    if code is None:
        code = 0
    elif not isinstance(code, int):
        sys.stderr.write(f"{code}\n")
        code = 1
    try:
        sys.stdout.flush()
        sys.stderr.flush()
    except OSError:
        code = code or 120
    os._exit(code)


def main(argv: list[str] | None = None) -> int:
    arguments = sys.argv[1:] if argv is None else argv
    if arguments == ["--version"]:
        sys.stdout.write(version_text() + "\n")
        return 0
    if arguments and arguments[0] in REGISTRY_COMMANDS:
        # The registry commands are what scripts run in loops: a parser of their own (no argparse), and none of the
        # node side's imports (docs/benchmarks.md "The CLI beside oras and cosign").
        from .registry import run

        return run(arguments[0], arguments[1:])
    parser = build_parser()
    args = parser.parse_args(arguments)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    result: int = args.func(args)
    return result


if __name__ == "__main__":
    sys.exit(main())
