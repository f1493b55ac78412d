"""Figure 8, the supply chain: what the signature policy and our registry client cost, side by side in one run.

Three comparisons, each interleaved A/B against a Debian docker-registry on loopback started here:
- warm `ctr run --rm` of the hello image pulled from the registry and signed, under an enforcing policy (the
  verification cached after the first run: the steady state), against the same image unsigned on a containerd
  whose shim has no policy at all (two private containerds, one run). Goal <= 1.05x.
- a first verification (a fresh registry client, nothing cached: the work the daemon does on a cache miss, timed
  in this process with the daemon's code, oci/cosign.py `verify_image`) against `cosign verify --key` of the same
  image (offline flags). Goal <= 0.5x. Skipped with a note when cosign is not built.
- `wasm-shim pull` against `oras pull --plain-http` of a 20 MiB artifact (both CLIs, from spawn to exit), with the
  peak RSS of each pull process (GNU time: the client streams, so its memory does not grow with the blob). Goal
  <= 1.0x.
"""

from __future__ import annotations

import functools
import os
import subprocess
import time
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from lab.registries import DockerRegistry
from wasm_shim.oci.auth import DockerCredentials
from wasm_shim.oci.cosign import sign_image, verify_image
from wasm_shim.oci.keys import encrypt_private_key
from wasm_shim.oci.layout import build_image
from wasm_shim.oci.manifest import MEDIA_TYPE_MANIFEST, Descriptor
from wasm_shim.oci.reference import Reference, parse_reference
from wasm_shim.oci.registry import RegistryClient
from wasm_shim.oci.transfer import pull_wasm, push_wasm

from .figure import Context, Figure, Row, met, rotate, timed
from .stats import ratio, summarize
from .testbed import OURS, BenchError, Testbed

REPO = Path(__file__).resolve().parents[1]
TOOLS = REPO / ".tools" / "bin"
WASM_SHIM = str(REPO / ".venv" / "bin" / "wasm-shim")
BIG = 20 << 20
PASSWORD = "bench"


def run(ctx: Context) -> Figure:
    figure = Figure("supply_chain", "8. Supply chain: policy, verification, pull (ms)")
    return timed(figure, lambda: _measure(ctx, figure))


def _push_image(client: RegistryClient, ref: Reference, wasm: bytes) -> Reference:
    image = build_image({"/app.wasm": wasm}, entrypoint=["/app.wasm"])
    for blob in (image.layer, image.config):
        client.push_blob(ref, Descriptor(blob.media_type, blob.digest, blob.size), functools.partial(bytes, blob.data))
    digest, _ = client.put_manifest(ref, ref.tag, image.manifest.data, MEDIA_TYPE_MANIFEST)
    return ref.with_digest(digest)


def _timed_process(argv: list[str], env: dict[str, str], work: Path) -> tuple[float, int]:
    """(seconds from spawn to exit, peak RSS in KiB) of one command; BenchError when it fails. The peak RSS comes
    from GNU time (`%M`): a child forked from this interpreter would report this interpreter's size as its own."""
    report = work / "time.out"
    wrapped = ["/usr/bin/time", "-f", "%M", "-o", str(report), *argv] if os.path.exists("/usr/bin/time") else argv
    began = time.perf_counter()
    done = subprocess.run(wrapped, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                          stderr=subprocess.PIPE, timeout=300, check=False)
    seconds = time.perf_counter() - began
    if done.returncode != 0:
        raise BenchError(f"`{' '.join(argv)}` exited {done.returncode}: {done.stderr.decode(errors='replace')[-1000:]}")
    try:
        peak = int(report.read_text().split()[-1])
    except (OSError, ValueError, IndexError):
        peak = 0
    return seconds, peak


def _measure(ctx: Context, figure: Figure) -> None:
    work = ctx.workdir / "supply"
    work.mkdir(parents=True, exist_ok=True)
    registry = DockerRegistry(work / "registry").start()
    labs: list[Testbed] = []
    try:
        key = ec.generate_private_key(ec.SECP256R1())
        (work / "team.pub").write_bytes(key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
        (work / "cosign.key").write_bytes(encrypt_private_key(key, PASSWORD.encode()))
        (work / "policy.toml").write_text(f'default = "allow"\n[[rule]]\nimages = ["{registry.address}/team/*"]\n'
                                          'keys = ["team.pub"]\nmode = "enforce"\n')
        hello = (ctx.guests / "hello.wasm").read_bytes()
        with RegistryClient(DockerCredentials({})) as client:
            signed = _push_image(client, parse_reference(f"{registry.address}/team/hello:v1"), hello)
            sign_image(client, signed, key)
            unsigned = _push_image(client, parse_reference(f"{registry.address}/open/hello:v1"), hello)
            _runs(ctx, figure, work, registry, signed, unsigned, labs)
            _verification(ctx, figure, work, client, signed, key)
            _pulls(ctx, figure, work, client, registry)
    finally:
        for testbed in labs:
            testbed.close()
        registry.stop()


def _runs(ctx: Context, figure: Figure, work: Path, registry: DockerRegistry, signed: Reference,
          unsigned: Reference, labs: list[Testbed]) -> None:
    cache = work / "shim-cache"
    cache.mkdir(mode=0o700, exist_ok=True)
    enforced = ctx.new_testbed("supply-enforce", env={"WASM_SHIM_POLICY": str(work / "policy.toml"),
                                                  "WASM_SHIM_CACHE_DIR": str(cache)})
    labs.append(enforced)
    plain = ctx.new_testbed("supply-plain")
    labs.append(plain)
    cases = {"signed, policy enforce": (enforced, signed), "unsigned, no policy": (plain, unsigned)}
    for testbed, ref in cases.values():
        testbed.containerd.ctr("images", "pull", "--plain-http", f"{ref.name}:v1", timeout=120)
    samples: dict[str, list[float]] = {label: [] for label in cases}

    def once(label: str) -> float:
        testbed, ref = cases[label]
        argv = testbed.containerd.ctr_argv("run", "--rm", "--runtime", OURS.runtime, f"{ref.name}:v1",
                                       testbed.new_id("supply"), "/app.wasm")
        began = time.perf_counter()
        done = subprocess.run(argv, env=testbed.containerd.ctr_env(), capture_output=True, text=True, timeout=60,
                              check=False)
        if done.returncode != 0 or "hello from wasm" not in done.stdout:
            raise BenchError(f"`{' '.join(argv)}` exited {done.returncode}: {done.stderr[-1000:]}")
        return (time.perf_counter() - began) * 1000

    for label in cases:  # untimed: daemon start, compilation, the first (uncached) verification
        once(label)
        once(label)
    for i in range(ctx.counts.instance_runs // 3 or 1):
        for label in rotate(list(cases), i):
            samples[label].append(once(label))
    base = summarize(samples["unsigned, no policy"])
    enforce = summarize(samples["signed, policy enforce"])
    r = ratio(enforce.p50, base.p50)
    figure.rows.append(Row("warm ctr run --rm: signed, policy enforce (verification cached)", "ms", enforce, r,
                           "<= 1.05x unsigned, no policy", met(r, 1.05)))
    figure.rows.append(Row("warm ctr run --rm: unsigned, no policy", "ms", base, 1.0))
    figure.series.update({f"run {k}": v for k, v in samples.items()})
    figure.commands.append(" ".join(enforced.containerd.ctr_argv("run", "--rm", "--runtime", OURS.runtime,
                                                                 f"{signed.name}:v1", "ID", "/app.wasm")))


def _verification(ctx: Context, figure: Figure, work: Path, client: RegistryClient, signed: Reference,
                  key: ec.EllipticCurvePrivateKey) -> None:
    cosign = TOOLS / "cosign"
    ours: list[float] = []
    theirs: list[float] = []
    env = {**os.environ, "HOME": str(work), "COSIGN_PASSWORD": PASSWORD}
    argv = [str(cosign), "verify", "--key", str(work / "team.pub"), "--insecure-ignore-tlog=true",
            "--allow-http-registry", f"{signed.name}:v1"]
    runs = max(3, ctx.counts.start_cmd_runs // 4)
    for i in range(runs):
        for who in rotate(["ours", "cosign"], i):
            if who == "ours":
                began = time.perf_counter()
                with RegistryClient(DockerCredentials({})) as fresh:
                    verify_image(fresh, parse_reference(f"{signed.name}:v1"), [key.public_key()])
                ours.append((time.perf_counter() - began) * 1000)
            elif cosign.exists():
                theirs.append(_timed_process(argv, env, work)[0] * 1000)
    s = summarize(ours)
    if theirs:
        c = summarize(theirs)
        r = ratio(s.p50, c.p50)
        figure.rows.append(Row("first verification (daemon's code, nothing cached)", "ms", s, r,
                               "<= 0.5x cosign verify", met(r, 0.5)))
        figure.rows.append(Row("cosign verify --key (offline flags)", "ms", c, 1.0))
        figure.series.update({"verify ours": ours, "verify cosign": theirs})
        figure.commands.append(" ".join(argv))
    else:
        figure.rows.append(Row("first verification (daemon's code, nothing cached)", "ms", s,
                               note="cosign not built: no comparison"))


def _pulls(ctx: Context, figure: Figure, work: Path, client: RegistryClient, registry: DockerRegistry) -> None:
    big = work / "big.wasm"
    big.write_bytes(b"\0asm\x01\0\0\0" + os.urandom(BIG - 8))
    ref = parse_reference(f"{registry.address}/team/big:v1")
    push_wasm(client, str(big), ref)
    oras = TOOLS / "oras"
    env = {**os.environ, "HOME": str(work)}
    times: dict[str, list[float]] = {"wasm-shim pull": [], "oras pull": [], "in-process pull": []}
    rss: dict[str, list[float]] = {"wasm-shim pull": [], "oras pull": []}
    runs = max(3, ctx.counts.start_cmd_runs // 6)
    for i in range(runs):
        for who in rotate(list(times), i):
            out = work / f"pull-{who.split()[0]}"
            out.mkdir(exist_ok=True)
            for leftover in out.iterdir():
                leftover.unlink()
            if who == "in-process pull":  # what the daemon does for wasm.shim.io/artifact: no interpreter start
                began = time.perf_counter()
                with RegistryClient(DockerCredentials({})) as fresh:
                    pull_wasm(fresh, ref, str(out / "big.wasm"))
                times[who].append((time.perf_counter() - began) * 1000)
                continue
            if who == "wasm-shim pull":
                argv = [WASM_SHIM, "pull", str(ref), "-o", str(out / "big.wasm")]
            elif oras.exists():
                argv = [str(oras), "pull", "--plain-http", str(ref), "-o", str(out)]
            else:
                continue
            seconds, peak = _timed_process(argv, env, work)
            if (out / "big.wasm").stat().st_size != BIG:
                raise BenchError(f"{who} wrote {(out / 'big.wasm').stat().st_size} bytes, expected {BIG}")
            times[who].append(seconds * 1000)
            rss[who].append(peak / 1024)
    ours = summarize(times["wasm-shim pull"])
    ours_rss = max(rss["wasm-shim pull"])
    inproc = summarize(times["in-process pull"])
    peak_traced = _traced_peak_mib(ref, work / "pull-traced.wasm")
    if times["oras pull"]:
        theirs = summarize(times["oras pull"])
        r = ratio(ours.p50, theirs.p50)
        figure.rows.append(Row(f"wasm-shim pull 20 MiB (peak RSS {ours_rss:.0f} MiB)", "ms", ours, r,
                               "<= 1.0x oras pull", met(r, 1.0)))
        figure.rows.append(Row(f"oras pull 20 MiB (peak RSS {max(rss['oras pull']):.0f} MiB)", "ms", theirs, 1.0))
        figure.rows.append(Row(f"in-process pull 20 MiB, the daemon's path (peak Python allocations "
                               f"{peak_traced:.1f} MiB)", "ms", inproc, ratio(inproc.p50, theirs.p50)))
    else:
        figure.rows.append(Row(f"wasm-shim pull 20 MiB (peak RSS {ours_rss:.0f} MiB)", "ms", ours,
                               note="oras not built: no comparison"))
    figure.series.update({f"{k}": v for k, v in times.items() if v})
    figure.commands.append(f"{WASM_SHIM} pull {ref} -o OUT/big.wasm")
    figure.notes.append("wasm-shim pull from spawn to exit includes the interpreter's start and its imports; the "
                        "in-process row is the transfer alone, as the daemon runs it")
    figure.notes.append("peak RSS of the pull process (GNU time %M): the client streams blobs to disk, so it does "
                        "not grow with the blob (a 20 MiB blob held in memory would add 20 MiB)")


def _traced_peak_mib(ref: Reference, out: Path) -> float:
    """Peak Python allocations (tracemalloc) during one in-process pull: bounded by the chunk size, not the blob."""
    import tracemalloc

    with RegistryClient(DockerCredentials({})) as client:
        client.get_manifest(ref)  # connection and imports first: only the transfer is traced
        tracemalloc.start()
        try:
            pull_wasm(client, ref, str(out))
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
    out.unlink(missing_ok=True)
    return peak / (1 << 20)
