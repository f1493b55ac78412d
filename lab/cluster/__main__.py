"""``python -m lab.cluster``: the command line (up, down, load-image, push-artifact, restart-containerd,
node-exec) and the internal ``_init``/``_node`` entry points the cluster runs as PID 1 of its namespaces."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from .cluster import down, load_image, node_by_name, node_exec, push_artifact, up
from .init import cluster_init, node_init
from .topology import DEFAULT_STATE, NODE_SUPPORT_DIR, NODES, REGISTRY, START_TIMEOUT, ClusterError, State


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m lab.cluster",
        description="A two-node Kubernetes cluster inside private namespaces on this machine: start, wait, stop.")
    parser.add_argument("--state", type=Path, default=DEFAULT_STATE, help="state directory (default %(default)s)")
    sub = parser.add_subparsers(dest="command", required=True)
    p_up = sub.add_parser("up", help="start the cluster; prints the admin kubeconfig path")
    p_up.add_argument("--port", type=int, default=0, help="API relay port on 127.0.0.1 (default: any free one)")
    p_up.add_argument("--timeout", type=float, default=START_TIMEOUT)
    p_up.add_argument("--image", type=Path, action="append", default=[],
                      help="an OCI image tarball to import into every node's containerd before kubelets start")
    p_down = sub.add_parser("down", help="stop the cluster and remove every trace of it (idempotent)")
    p_down.add_argument("--keep-logs", action="store_true")
    p_load = sub.add_parser("load-image", help="import an OCI image tarball into nodes' containerd (k8s.io)")
    p_load.add_argument("tar", type=Path)
    p_load.add_argument("--node", action="append", help="only this node (repeatable; default: all)")
    p_push = sub.add_parser("push-artifact", help=f"push a .wasm into the cluster's registry ({REGISTRY}) from "
                            "inside a node; prints REGISTRY/REPOSITORY@DIGEST for a pod's image")
    p_push.add_argument("wasm", type=Path)
    p_push.add_argument("repository_tag", metavar="REPOSITORY:TAG")
    p_push.add_argument("--node", default=NODES[0].name, help="the node to push from (default %(default)s)")
    p_restart = sub.add_parser("restart-containerd", help="restart a node's containerd through its supervisor")
    p_restart.add_argument("node")
    p_exec = sub.add_parser("node-exec", help="run a command in a node's mount and network namespaces")
    p_exec.add_argument("node")
    p_exec.add_argument("argv", nargs=argparse.REMAINDER)
    p_init = sub.add_parser("_init")
    p_init.add_argument("--listener-fd", type=int, required=True)
    p_node = sub.add_parser("_node")
    p_node.add_argument("node")
    args = parser.parse_args(argv)
    state = State(args.state)
    try:
        if args.command == "up":
            print(up(state, port=args.port, timeout=args.timeout, images=args.image))
        elif args.command == "down":
            problems = down(state, keep_logs=args.keep_logs)
            for problem in problems:
                print(f"down: {problem}", file=sys.stderr)
            return 1 if problems else 0
        elif args.command == "load-image":
            for name in args.node or [n.name for n in NODES]:
                load_image(state, node_by_name(name), args.tar)
        elif args.command == "push-artifact":
            print(push_artifact(state, args.wasm, args.repository_tag, node_by_name(args.node)))
        elif args.command == "restart-containerd":
            node = node_by_name(args.node)
            result = node_exec(state, node, [f"{NODE_SUPPORT_DIR}/restart-containerd"])
            sys.stderr.write(result.stderr)
            return result.returncode
        elif args.command == "node-exec":
            result = node_exec(state, node_by_name(args.node), args.argv)
            sys.stdout.write(result.stdout)
            sys.stderr.write(result.stderr)
            return result.returncode
        elif args.command == "_init":
            cluster_init(state, args.listener_fd)
        elif args.command == "_node":
            node_init(state, node_by_name(args.node))
    except ClusterError as exc:
        print(f"cluster: error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
