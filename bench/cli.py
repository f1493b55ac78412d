"""Figure 12, the CLI beside oras and cosign: each command from spawn to exit, A/B interleaved in one run.

Against a Debian docker-registry on loopback started here:
- `wasm-shim pull` of a 20 MiB artifact against `oras pull --plain-http` of the same (goal <= 1.5x);
- `wasm-shim verify --key` against `cosign verify --key --insecure-ignore-tlog=true` of one signed artifact
  (goal <= 2x);
- `wasm-shim tags` against `oras repo tags`, and `wasm-shim --version` against `oras version` (no goal: what a
  start costs, the part of every command that is not the registry's).
Pairs run in turn (ours, theirs, ours, ...), the order rotated each round; the ratio is of the medians. Each pair's
note gives the load average (1 minute) before and after it ran. A figure's row is skipped with a note when oras or
cosign is not built.
"""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

from lab.registries import DockerRegistry
from wasm_shim.oci.auth import DockerCredentials
from wasm_shim.oci.cosign import sign_image
from wasm_shim.oci.keys import generate_key_pair, load_private_key
from wasm_shim.oci.reference import parse_reference
from wasm_shim.oci.registry import RegistryClient
from wasm_shim.oci.transfer import push_wasm

from .figure import Context, Figure, Row, met, rotate, timed
from .machine import load_average
from .stats import ratio, summarize
from .testbed import BenchError

REPO = Path(__file__).resolve().parents[1]
TOOLS = REPO / ".tools" / "bin"
WASM_SHIM = str(REPO / ".venv" / "bin" / "wasm-shim")
BIG = 20 << 20
PASSWORD = "bench"


def run(ctx: Context) -> Figure:
    figure = Figure("cli", "12. The CLI beside oras and cosign, spawn to exit (ms)")
    return timed(figure, lambda: _measure(ctx, figure))


def _spawn(argv: list[str], env: dict[str, str]) -> float:
    began = time.perf_counter()
    done = subprocess.run(argv, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                          stderr=subprocess.PIPE, timeout=300, check=False)
    seconds = time.perf_counter() - began
    if done.returncode != 0:
        raise BenchError(f"`{' '.join(argv)}` exited {done.returncode}: {done.stderr.decode(errors='replace')[-1000:]}")
    return seconds * 1000


def _measure(ctx: Context, figure: Figure) -> None:
    work = ctx.workdir / "cli"
    work.mkdir(parents=True, exist_ok=True)
    registry = DockerRegistry(work / "registry").start()
    try:
        pair = generate_key_pair(PASSWORD.encode())
        (work / "cosign.key").write_bytes(pair.private_pem)
        (work / "cosign.pub").write_bytes(pair.public_pem)
        key = load_private_key(pair.private_pem, PASSWORD.encode(), "cosign.key")
        big = work / "big.wasm"
        big.write_bytes(b"\0asm\x01\0\0\0" + os.urandom(BIG - 8))
        ref = parse_reference(f"{registry.address}/team/big:v1")
        with RegistryClient(DockerCredentials({})) as client:
            pinned = ref.with_digest(push_wasm(client, str(big), ref))
            sign_image(client, pinned, key)
        home = work / "home"
        (home / ".docker").mkdir(parents=True, exist_ok=True)
        env = {**os.environ, "HOME": str(home), "DOCKER_CONFIG": str(home / ".docker"), "COSIGN_PASSWORD": PASSWORD}
        out = work / "out"
        out.mkdir(exist_ok=True)
        oras, cosign = TOOLS / "oras", TOOLS / "cosign"
        cases = {
            "pull 20 MiB": ([WASM_SHIM, "pull", str(ref), "-o", str(out / "big.wasm")],
                            [str(oras), "pull", "--plain-http", str(ref), "-o", str(out)], oras, "oras pull", 1.5),
            "verify": ([WASM_SHIM, "verify", "--key", str(work / "cosign.pub"), str(ref)],
                       [str(cosign), "verify", "--key", str(work / "cosign.pub"), "--insecure-ignore-tlog=true",
                        "--allow-http-registry", str(ref)], cosign, "cosign verify", 2.0),
            "tags": ([WASM_SHIM, "tags", f"{registry.address}/team/big"],
                     [str(oras), "repo", "tags", "--plain-http", f"{registry.address}/team/big"], oras,
                     "oras repo tags", None),
            "start (--version)": ([WASM_SHIM, "--version"], [str(oras), "version"], oras, "oras version", None),
        }
        runs = max(3, ctx.counts.start_cmd_runs // 4)
        for label, (ours, theirs, tool, their_name, goal) in cases.items():
            if not tool.exists():
                figure.rows.append(Row(f"wasm-shim {label}", "ms", summarize([_spawn(ours, env)]),
                                   note=f"{tool.name} not built: no comparison"))
                continue
            samples: dict[str, list[float]] = {"ours": [], "theirs": []}
            _spawn(ours, env), _spawn(theirs, env)  # untimed: page cache, the registry's first answers
            load_before = load_average()[0]
            for i in range(runs):
                for who in rotate(["ours", "theirs"], i):
                    samples[who].append(_spawn(ours if who == "ours" else theirs, env))
            figure.notes.append(f"{label}: load average {load_before:.2f} before, {load_average()[0]:.2f} after "
                                f"({runs} pairs)")
            mine, yours = summarize(samples["ours"]), summarize(samples["theirs"])
            r = ratio(mine.p50, yours.p50)
            figure.rows.append(Row(f"wasm-shim {label}", "ms", mine, r,
                                   f"<= {goal}x {their_name}" if goal else "",
                                   met(r, goal) if goal else None))
            figure.rows.append(Row(their_name, "ms", yours, 1.0))
            figure.series.update({f"{label} wasm-shim": samples["ours"], f"{label} {their_name}": samples["theirs"]})
            figure.commands.append(" ".join(ours))
        figure.notes.append("wasm-shim runs `python -I -S` (scripts/setup.sh's launcher), imports only what the "
                            "command needs (a plain-HTTP pull: no json, re, socket or ssl modules, OpenSSL's sha256 "
                            "only for a blob of 1 MiB or more) and exits without the interpreter's finalization; "
                            "docs/benchmarks.md says where the rest of a pull's time goes")
    finally:
        registry.stop()
