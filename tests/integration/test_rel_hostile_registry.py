"""A hostile registry (lab/hostile_registry.py on loopback) against the registry client, the CLI and
the daemon: every read is bounded, and the error names the bound.

- Huge bodies (an error body, a token response, a tag listing, a referrer listing; 128 MiB each, streamed without a
  Content-Length so only the reader can stop it) through `wasm-shim pull/tags/verify`: the error names the cap and
  the CLI's peak RSS (wait4's ru_maxrss) grows less than 32 MiB over the same command answered with a small error.
- The same huge error body at Create (`wasm.shim.io/artifact`, containerd 1.6): the daemon's peak RSS (VmHWM)
  grows less than 32 MiB and the Create fails with the cap in its message.
- A body trickling a byte a second, and headers trickling a byte a second: `wasm-shim pull` ends with an error
  naming the total deadline instead of waiting forever (each wait here is only a hang guard).
- A redirect loop ends at the redirect limit; a redirect from HTTPS to plain HTTP is refused before the plain host
  is contacted; credentials never leave the registry's origin: a blob redirected to storage on another port is
  fetched without them, and a pagination link to another port is not followed at all.
"""

from __future__ import annotations

import base64
import hashlib
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from lab.fixtures import BUSYBOX_REF
from lab.hostile_registry import (
    HostileRegistry,
    basic_auth,
    huge,
    redirect,
    respond,
    trickle,
    trickle_headers,
)
from lab.registries import make_tls
from lab.shimtools import RUNTIME, daemon_pids, shim_log_text
from lab.soak import record
from wasm_shim.oci.auth import DockerCredentials
from wasm_shim.oci.manifest import MEDIA_TYPE_INDEX, Descriptor
from wasm_shim.oci.reference import parse_reference
from wasm_shim.oci.registry import RegistryClient, RegistryError

pytestmark = [pytest.mark.integration, pytest.mark.soak, pytest.mark.timeout(300)]

WASM_SHIM = Path(__file__).resolve().parents[2] / ".venv" / "bin" / "wasm-shim"
HUGE = 128 << 20  # what the registry sends
BOUND_KIB = 32 << 10  # what the reader's peak RSS may grow by
SMALL_ERROR = b'{"errors":[{"code":"DENIED","message":"small"}]}'
DIGEST = "sha256:" + "ab" * 32


@pytest.fixture
def hostile() -> Iterator[HostileRegistry]:
    with HostileRegistry() as server:
        yield server


def _cli(args: list[str], tmp_path: Path) -> tuple[int, str, int]:
    """Run `wasm-shim ARGS`; (exit code, stderr, peak RSS in KiB from wait4)."""
    err_path = tmp_path / "stderr"
    with err_path.open("wb") as err:
        process = subprocess.Popen([str(WASM_SHIM), *args], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                   stderr=err, cwd=tmp_path, env={**os.environ, "COSIGN_PASSWORD": ""})
        _, status, usage = os.wait4(process.pid, 0)
        process.returncode = os.waitstatus_to_exitcode(status)
    return process.returncode, err_path.read_text(errors="replace"), usage.ru_maxrss


def _pub(path: Path) -> Path:
    key = ec.generate_private_key(ec.SECP256R1()).public_key()
    path.write_bytes(key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    return path


CASES = {
    # name: (route method, route path, the hostile answer, the command, what the error must say)
    "error body": ("GET", "/v2/team/app/manifests/", huge(400, HUGE, declare=False),
                   ["pull", "{reg}/team/app:v1", "-o", "app.wasm", "--timeout", "10"],
                   "error body cut at the 4096 byte limit"),
    "token response": ("GET", "/token", huge(200, HUGE, declare=False),
                       ["pull", "{reg}/team/app:v1", "-o", "app.wasm", "--timeout", "10"],
                       "the token response is over the 1048576 byte limit"),
    "tag listing": ("GET", "/v2/team/app/tags/list", huge(200, HUGE, declare=False),
                    ["tags", "{reg}/team/app", "--timeout", "10"],
                    "(all pages together) is over the 4194304 byte limit"),
    "referrer listing": ("GET", "/v2/team/app/referrers/",
                         huge(200, HUGE, declare=False, content_type=MEDIA_TYPE_INDEX),
                         ["verify", "--key", "cosign.pub", "{reg}/team/app@" + DIGEST, "--timeout", "10"],
                         "(all pages together) is over the 4194304 byte limit"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_huge_bodies_are_cut_at_their_cap_and_memory_stays_bounded(hostile: HostileRegistry, tmp_path: Path,
                                                                   case: str) -> None:
    method, path, answer, command, expected = CASES[case]
    _pub(tmp_path / "cosign.pub")
    args = [part.format(reg=hostile.address) for part in command]
    if case == "token response":  # the registry sends the client to its token endpoint first
        challenge = f'Bearer realm="http://{hostile.address}/token",service="hostile"'
        hostile.route("GET", "/v2/team/app/manifests/", respond(401, SMALL_ERROR, {"WWW-Authenticate": challenge}))
    hostile.route(method, path, respond(400, SMALL_ERROR))
    code, baseline_err, baseline = _cli(args, tmp_path)
    assert code != 0 and "Traceback" not in baseline_err, baseline_err
    hostile.route(method, path, answer)
    code, stderr, peak = _cli(args, tmp_path)
    assert code != 0, stderr
    assert expected in stderr, stderr
    assert "Traceback" not in stderr
    growth = peak - baseline
    assert growth < BOUND_KIB, f"{case}: peak RSS {peak} KiB, {growth} KiB over the small answer's {baseline} KiB"
    assert not (tmp_path / "app.wasm").exists()
    record(f"hostile registry: huge {case} (CLI)",
           tried=f"`wasm-shim {args[0]}` against a {HUGE >> 20} MiB {case} with no Content-Length",
           held=f"exit {code}: ...{stderr.strip().splitlines()[-1][-110:]}; peak RSS +{growth} KiB "
                f"(bound {BOUND_KIB} KiB)")


@pytest.mark.parametrize("containerd_factory", ["1.6"], indirect=True)
def test_daemon_memory_stays_bounded_under_a_huge_error_body(containerd_factory, busybox_image_tar,  # type: ignore[no-untyped-def]
                                                             hostile: HostileRegistry, tmp_path: Path) -> None:
    """The root daemon is shared by every wasm pod of the node: a registry a pod names must not grow it."""
    cache = tmp_path / "shim-cache"
    cache.mkdir(mode=0o700)
    containerd = containerd_factory(env={"WASM_SHIM_CACHE_DIR": str(cache),
                                         "WASM_SHIM_ARTIFACT_DIR": str(tmp_path / "artifacts"),
                                         "WASM_SHIM_ARTIFACT_REGISTRIES": hostile.address})
    containerd.import_image(busybox_image_tar)
    hostile.route("GET", "/v2/team/small/manifests/", respond(400, SMALL_ERROR))
    hostile.route("GET", "/v2/team/huge/manifests/", huge(400, HUGE, declare=False))

    def create(repository: str, task_id: str) -> subprocess.CompletedProcess[str]:
        failed = containerd.ctr("run", "--rm", "--runtime", RUNTIME, "--annotation",
                                f"wasm.shim.io/artifact={hostile.address}/team/{repository}:v1", BUSYBOX_REF,
                                task_id, "/app.wasm", check=False, timeout=120)
        containerd.ctr("container", "rm", task_id, check=False)
        return failed

    warm = create("small", "warm-1")  # the daemon is up and has imported the registry client
    assert warm.returncode != 0 and "HTTP 400" in warm.stderr, warm.stderr
    pids = daemon_pids(containerd)
    assert len(pids) == 1, pids
    before = _peak_rss_kib(pids[0])
    failed = create("huge", "huge-1")
    after = _peak_rss_kib(pids[0])
    assert daemon_pids(containerd) == pids, "the daemon must survive"
    assert failed.returncode != 0
    assert "error body cut at the 4096 byte limit" in failed.stderr, failed.stderr
    assert after - before < BOUND_KIB, f"daemon VmHWM {before} -> {after} KiB"
    assert "Traceback" not in shim_log_text(containerd)
    record("hostile registry: huge error body at Create (daemon, 1.6)",
           tried=f"wasm.shim.io/artifact naming a registry answering 400 with {HUGE >> 20} MiB",
           held=f"Create failed naming the cap; daemon VmHWM {before} -> {after} KiB (bound +{BOUND_KIB} KiB)")


def _peak_rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise AssertionError(f"no VmHWM for {pid}")


@pytest.mark.parametrize("slow", ["body", "headers"])
def test_a_trickling_registry_ends_at_the_total_deadline(hostile: HostileRegistry, tmp_path: Path,
                                                         slow: str) -> None:
    """A byte a second never trips a read timeout of 2 s; the total deadline (3 read timeouts) ends it."""
    answer = trickle(200) if slow == "body" else trickle_headers()
    hostile.route("GET", "/v2/team/app/manifests/", answer)
    done = subprocess.run([str(WASM_SHIM), "pull", f"{hostile.address}/team/app:v1", "-o", "app.wasm",
                           "--timeout", "2"], capture_output=True, text=True, timeout=120, cwd=tmp_path,
                          stdin=subprocess.DEVNULL)
    assert done.returncode != 0
    assert "within the deadline of 6 s plus 1 s per 64 KiB received" in done.stderr, done.stderr
    assert "Traceback" not in done.stderr
    assert not (tmp_path / "app.wasm").exists()
    record(f"hostile registry: {slow} trickling a byte a second",
           tried="`wasm-shim pull --timeout 2` (read timeout 2 s, so each byte resets it)",
           held=f"exit {done.returncode}: ...{done.stderr.strip().splitlines()[-1][-110:]}")


def test_a_redirect_loop_ends_at_the_redirect_limit(hostile: HostileRegistry) -> None:
    path = "/v2/team/app/manifests/v1"
    hostile.route("GET", path, redirect(path))
    with RegistryClient(DockerCredentials({}), attempts=1) as client, \
            pytest.raises(RegistryError, match=r"more than 5 redirects \(the redirect limit\)"):
        client.get_manifest(parse_reference(f"{hostile.address}/team/app:v1"))
    assert len(hostile.seen(path)) == 6  # the request and 5 redirects, then no more
    record("hostile registry: redirect loop", tried="a manifest that redirects to itself",
           held="RegistryError after 6 requests naming the redirect limit (5)")


def test_a_redirect_from_https_to_plain_http_is_refused(tmp_path: Path) -> None:
    tls = make_tls(tmp_path / "tls")
    with HostileRegistry(tls=tls) as secure, HostileRegistry() as plain:
        plain.route("GET", "/v2/team/app/manifests/", respond(200, b"{}"))
        secure.route("GET", "/v2/team/app/manifests/", redirect(f"http://{plain.address}/v2/team/app/manifests/v1"))
        with RegistryClient(DockerCredentials({}), ca_bundle=str(tls.ca_pem), attempts=1) as client, \
                pytest.raises(RegistryError, match="redirect from HTTPS to plain HTTP .* refused"):
            client.get_manifest(parse_reference(f"{secure.address}/team/app:v1"))
        assert len(secure.seen("/v2/team/app/manifests/")) == 1
        assert plain.seen("/v2/team/") == [], "the plain-HTTP host must not be contacted"
    record("hostile registry: redirect HTTPS -> HTTP", tried="a TLS registry redirecting a manifest to plain HTTP",
           held="refused before the plain host was contacted")


def test_credentials_never_leave_the_registrys_origin(hostile: HostileRegistry) -> None:
    data = b"\0asm\x01\0\0\0"
    layer = Descriptor("application/wasm", "sha256:" + hashlib.sha256(data).hexdigest(), len(data))
    with HostileRegistry() as elsewhere:
        elsewhere.route("GET", "/storage/", respond(200, data))
        elsewhere.route("GET", "/v2/team/app/tags/list", respond(200, b'{"tags":["stolen"]}'))
        hostile.route("GET", f"/v2/team/app/blobs/{layer.digest}",
                      basic_auth(redirect(f"http://{elsewhere.address}/storage/{layer.digest}")))
        link = f'<http://{elsewhere.address}/v2/team/app/tags/list?last=v1>; rel="next"'
        hostile.route("GET", "/v2/team/app/tags/list",
                      basic_auth(respond(200, b'{"name":"team/app","tags":["v1"]}', {"Link": link})))
        secret = base64.b64encode(b"alice:wonderland").decode()
        credentials = DockerCredentials({"auths": {hostile.address: {"auth": secret}}})
        ref = parse_reference(f"{hostile.address}/team/app:v1")
        with RegistryClient(credentials, attempts=1) as client:
            # Blob storage on another origin (a redirect, as registries do): fetched, without the credentials.
            assert client.fetch_blob_bytes(ref, layer, 1 << 20) == data
            # A pagination link to another origin: not followed at all.
            with pytest.raises(RegistryError, match=f"the pagination link http://{elsewhere.address}/.* leaves "
                                                    "the registry"):
                client.list_tags(ref)
        sent = [r for r in hostile.seen("/v2/team/") if "authorization" in r.headers]
        assert {r.path.split("/")[4] for r in sent} == {"blobs", "tags"}, "the registry itself got them"
        assert [r.path for r in elsewhere.seen()] == [f"/storage/{layer.digest}"]
        assert all("authorization" not in r.headers for r in elsewhere.seen()), elsewhere.seen()
    record("hostile registry: credentials and other origins",
           tried="a registry with basic auth redirecting a blob to another port and paginating to another port",
           held="the blob came from storage without Authorization; the pagination link was refused unfollowed")
