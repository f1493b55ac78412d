"""An OCI distribution-spec client that checks every digest while it streams and bounds every read.

Owns `RegistryClient`: manifests (get, resolve, put), blobs (exists, streamed fetch, monolithic upload), tag listing
and the referrers API with the tag-schema fallback (distribution-spec v1.1 "Listing Referrers", "Referrers Tag
Schema"), and the requests under them: authentication, redirects, retries. It is built on our own HTTP/1.1,
oci/transport.py (README "Registries" says why neither the `oras` package nor urllib3). It knows nothing of
containerd or the daemon.

Rules:
- Transport: HTTPS with certificate verification (the system store, or `ca_bundle`). Plain HTTP only to a loopback
  host or one named in `insecure`, and there only when a plain `GET /v2/` is answered by something that is not a
  TLS server (`_probe`; a certificate that does not verify is an error, never a reason to fall back).
- Proxies: HTTPS_PROXY / HTTP_PROXY / NO_PROXY (or the explicit `proxies`) as Go clients read them (oci/proxy.py):
  a CONNECT tunnel for https (TLS stays end to end), forwarding for http; never for loopback; the proxy URL's
  user:password as Proxy-Authorization; an https:// proxy over TLS (oci/transport.py).
- Where a registry is asked: with `hosts` (containerd's `config_path`, oci/hosts.py), the first host its hosts.toml
  names that can pull and resolve, else its `server`, with that file's scheme (plain HTTP exactly where it says
  `http://`), CA files, client certificates and skip_verify: the place and the TLS containerd pulls with.
- Authentication: anonymous first; on 401 the challenge says Basic or Bearer (distribution token spec: GET the
  realm with service and scope, Basic credentials if any; a refresh token is POSTed). Headers are cached per
  host and repository; a 401 after authenticating is an error naming the registry. Credentials go only to the
  origin (scheme, host, port) they are for: the registry's own, or the token realm's.
- Redirects (blob storage) are followed by this module, at most `REDIRECT_LIMIT` times, for GET and HEAD only,
  never from HTTPS to plain HTTP, to plain HTTP only where it is allowed, and without the Authorization header once
  the origin changes (RFC 9110 section 15.4 leaves all of this to the client; the transport follows nothing).
- Every read is bounded (oci/limits.py; the error names the cap): manifests 4 MiB, error bodies kept to 4 KiB
  for the message and the rest never read, token responses 1 MiB, tag and referrer listings 4 MiB over at most
  100 pages, pagination links and redirect targets 8 KiB and on the registry's own origin. Blobs stream into the
  caller's file, checked against their descriptor's size and digest (a server sending more than the size is cut
  off at once, and one announcing more is refused before a byte is read).
- Every request has connect and read timeouts, and every exchange a total deadline: the client's total timeout
  (3 read timeouts by default) plus one second per 64 KiB received, so a body trickling a byte a second ends.
  Connection failures, timeouts, 429 and 5xx are retried with exponential backoff, a bounded number of times; a
  blob whose stream breaks is fetched again from the start; an exchange past its deadline is not retried.
- Every manifest fetched is hashed: by digest it must match; by tag a `Docker-Content-Digest` header must agree.
  Manifests are uploaded as the exact bytes given, so their digest is what the caller computed.
- Errors are RegistryError naming the method, URL, status and the registry's own error message.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Mapping

from .auth import AuthError, Credential, DockerCredentials, parse_challenge
from .deadline import Deadline
from .digest import DigestMismatch, StreamVerifier, sha256_digest
from .errors import NotFoundError, RegistryError
from .jsoncodec import loads
from .limits import (
    ERROR_BODY_LIMIT,
    LISTING_LIMIT,
    LISTING_PAGES,
    MANIFEST_LIMIT,
    MIN_RATE,
    REDIRECT_LIMIT,
    TOKEN_RESPONSE_LIMIT,
    TOTAL_TIMEOUT_READS,
    URL_LIMIT,
)
from .manifest import (
    INDEX_TYPES,
    MANIFEST_ACCEPT,
    MEDIA_TYPE_INDEX,
    Descriptor,
    ManifestError,
    canonical_json,
    descriptors_of,
    parse_json_object,
)
from .proxy import ProxySettings, loopback_address
from .reference import Reference, check_digest
from .tls import Trust
from .transport import ProxyFailed, TimedOut, TLSFailed, Transport, TransportError
from .url import URLError, encode_query, join, origin, split_authority, split_url
from .values import Value

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import IO, Any

    from .hosts import Endpoint, RegistryHosts
    from .transport import Exchange

__all__ = ["Manifest", "NotFoundError", "Progress", "RegistryClient", "RegistryError", "fallback_tag",
           "is_loopback"]

CHUNK = 1 << 20  # blob reads: fewer Python-level iterations per MiB
RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})
REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
MAX_PAGES = LISTING_PAGES


class Progress:
    """Progress of one transfer; the default does nothing (see oci/progress.py for the terminal one)."""

    def advance(self, count: int) -> None:
        pass

    def close(self) -> None:
        pass


ProgressFactory = Callable[[str, int], Progress]


def _no_progress(label: str, total: int) -> Progress:
    return Progress()


class Manifest(Value):
    """A manifest or index exactly as the registry sent it, with its digest."""

    __slots__ = ("media_type", "data", "digest")
    media_type: str
    data: bytes
    digest: str

    def __init__(self, media_type: str, data: bytes, digest: str) -> None:
        self._init(media_type, data, digest)

    def json(self, what: str) -> dict[str, Any]:
        return parse_json_object(self.data, what)

    def descriptor(self) -> Descriptor:
        return Descriptor(self.media_type, self.digest, len(self.data))


def is_loopback(host: str) -> bool:
    host = host.strip("[]")
    return host == "localhost" or loopback_address(host)


def _registry_message(body: bytes, cut: bool = False) -> str:
    """The registry's error text (distribution-spec error codes: {"errors":[{code, message}]}), else the body;
    `cut` says the body went on past what was kept (oci/limits.py ERROR_BODY_LIMIT)."""
    text = ""
    try:
        doc = loads(body)
        errors = doc.get("errors") if isinstance(doc, dict) else None
        if isinstance(errors, list) and errors:
            text = "; ".join(f"{e.get('code', '')}: {e.get('message', '')}".strip(": ") for e in errors
                             if isinstance(e, dict))
    except ValueError:
        pass
    if not text:
        text = body[:300].decode(errors="replace").strip()
    if cut:
        text += f" (error body cut at the {ERROR_BODY_LIMIT} byte limit; the rest was not read)"
    return text


def _origin(url: str) -> tuple[str, str, int]:
    """(scheme, host, port) with the scheme's default port filled in (RFC 6454 origin); oci/url.py's reading."""
    return origin(url)


class RegistryClient:
    def __init__(
        self,
        credentials: DockerCredentials | None = None,
        *,
        ca_bundle: str | None = None,
        insecure: tuple[str, ...] = (),
        connect_timeout: float = 10.0,
        read_timeout: float = 60.0,
        total_timeout: float | None = None,
        attempts: int = 4,
        backoff: float = 0.5,
        progress: ProgressFactory = _no_progress,
        sleep: Callable[[float], None] = time.sleep,
        hosts: RegistryHosts | None = None,
        proxies: ProxySettings | None = None,
        extra_cas: tuple[str, ...] = (),
    ) -> None:
        self.credentials = credentials if credentials is not None else DockerCredentials()
        self.insecure = frozenset(insecure)
        self.attempts = max(1, attempts)
        self.backoff = backoff
        self.progress = progress
        self._sleep = sleep
        self.total_timeout = total_timeout if total_timeout is not None else TOTAL_TIMEOUT_READS * read_timeout
        # `extra_cas` are trusted beside the system's CAs (as containerd adds a hosts.toml `ca`); `ca_bundle`
        # replaces them (oci/tls.py).
        self._trust = Trust(ca_bundle, () if ca_bundle else extra_cas)
        self._transport = Transport(connect_timeout, read_timeout, self._trust)
        # Proxies as Go clients (oras, cosign, containerd) take them: HTTPS_PROXY, HTTP_PROXY, NO_PROXY.
        self.proxies = proxies if proxies is not None else ProxySettings.from_environment()
        self._scheme: dict[str, str] = {}
        self._auth: dict[tuple[str, str], str] = {}
        self.hosts = hosts  # containerd's registry host configuration (oci/hosts.py): where a registry is asked
        self._routes: dict[str, Endpoint | None] = {}  # registry -> the endpoint asked for it (None: the registry)
        self._endpoints: dict[str, Endpoint] = {}  # netloc (lower case) -> a configured endpoint there

    def close(self) -> None:
        self._transport.close()

    def __enter__(self) -> RegistryClient:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    # -- transport ---------------------------------------------------------------------------------------------
    def _plain_http_allowed(self, host: str) -> bool:
        configured = self._endpoints.get(host.lower())
        try:
            hostname = split_authority(host)[0]
        except URLError:
            hostname = host
        return host in self.insecure or is_loopback(hostname) or \
            (configured is not None and configured.scheme == "http")

    def _route(self, ref: Reference) -> Endpoint | None:
        """The endpoint containerd's hosts.toml names first for `ref`'s registry (None: ask the registry itself)."""
        if self.hosts is None:
            return None
        if ref.registry not in self._routes:
            from .hosts import HostsError

            try:
                endpoints = self.hosts.endpoints(ref.registry)
            except (HostsError, OSError) as exc:
                raise RegistryError(f"{ref.registry}: containerd's registry host configuration cannot be used: "
                                    f"{exc}") from None
            endpoint = endpoints[0] if endpoints else None
            self._routes[ref.registry] = endpoint
            if endpoint is not None:
                self._endpoints[endpoint.netloc.lower()] = endpoint
        return self._routes[ref.registry]

    def _base_for(self, ref: Reference) -> str:
        """scheme://host[:port] that requests for `ref` go to: the configured endpoint, else the registry."""
        endpoint = self._route(ref)
        return endpoint.base if endpoint is not None else self._base(ref.api_host)

    def _trust_for(self, url: str) -> Trust:
        """The TLS trust for `url`: a configured endpoint's CA files, client certificates and skip_verify
        (oci/hosts.py) on top of the client's own; else the client's."""
        try:
            endpoint = self._endpoints.get(split_url(url).authority)
        except URLError:
            return self._trust  # the request refuses the URL itself
        if endpoint is None or endpoint.scheme != "https" or endpoint.tls_key == ((), (), False):
            return self._trust
        return Trust(self._trust.ca_bundle, self._trust.extra_cas + endpoint.ca_files, endpoint.client_pairs,
                     endpoint.skip_verify)

    def _base(self, host: str) -> str:
        scheme = self._scheme.get(host)
        if scheme is None:
            scheme = self._probe(host)
            self._scheme[host] = scheme
        return f"{scheme}://{host}"

    def _probe(self, host: str) -> str:
        """https, unless the host may speak plain HTTP and does: a plain `GET /v2/` answered by anything but a TLS
        server's "HTTP request to an HTTPS server" 400. Probing in plain text first spares a plain registry the TLS
        context and handshake (the system CA store alone takes milliseconds to load), and the connection the answer
        came on is kept for the requests that follow."""
        if not self._plain_http_allowed(host):
            return "https"
        url = f"http://{host}/v2/"
        try:
            exchange = self._transport.send(Deadline(self.total_timeout, MIN_RATE), "GET", url, headers={}, body=None,
                                            proxy=self.proxies.proxy_for(url))
        except TimedOut:
            return "http"  # it took a plain request and did not answer: not a TLS server (those answer 400 or close)
        except ProxyFailed as exc:  # the proxy, not the registry, failed: nothing was learnt about the scheme
            raise RegistryError(f"GET {url}: {exc}") from None
        except (TransportError, RegistryError):
            return "https"  # unreachable or not HTTP: the real request reports it, with retries
        if exchange.status != 400:
            exchange.discard()  # read to its end, so the connection is kept for the requests that follow
            return "http"
        with exchange:
            text, _ = exchange.error_text()
        return "https" if b"HTTPS" in text or "HTTPS" in exchange.response.reason else "http"

    def _send(self, method: str, url: str, headers: Mapping[str, str], body: Any,
              credential: tuple[tuple[str, str, int], str] | None) -> Exchange:
        """One request, following redirects (see the module rules); `credential` is (origin, Authorization) and
        is sent only to that origin."""
        target = url
        for _ in range(REDIRECT_LIMIT + 1):
            hop_headers = dict(headers)
            if credential is not None and _origin(target) == credential[0]:
                hop_headers["Authorization"] = credential[1]
            deadline = Deadline(self.total_timeout, MIN_RATE)
            payload = body() if body else None
            try:
                exchange = self._transport.send(deadline, method, target, headers=hop_headers, body=payload,
                                                trust=self._trust_for(target), proxy=self.proxies.proxy_for(target))
            finally:
                if payload is not None and not isinstance(payload, bytes):
                    payload.close()  # sent whole (or failed): a file body is closed here, opened again per try
            if exchange.status not in REDIRECT_STATUSES:
                return exchange
            location = exchange.headers.get("Location", "")
            status = exchange.status
            exchange.discard()
            if not location:
                raise RegistryError(f"{method} {target}: HTTP {status} redirect without a Location", status)
            if len(location) > URL_LIMIT:
                raise RegistryError(f"{method} {target}: HTTP {status} redirect to a Location of {len(location)} "
                                    f"characters, over the {URL_LIMIT} character limit", status)
            if method not in ("GET", "HEAD"):
                raise RegistryError(f"{method} {target}: HTTP {status} redirect to {location} not followed (only "
                                    "GET and HEAD are redirected)", status)
            target = self._redirect_target(method, target, location, status)
        raise RegistryError(f"{method} {url}: more than {REDIRECT_LIMIT} redirects (the redirect limit); the last "
                            f"went to {target}")

    def _redirect_target(self, method: str, current: str, location: str, status: int) -> str:
        target = join(current, location)
        try:
            parts = split_url(target)
        except URLError as exc:
            raise RegistryError(f"{method} {current}: HTTP {status} redirect to {target[:300]}: {exc}", status) \
                from None
        if parts.scheme == "http" and current.startswith("https:"):
            raise RegistryError(f"{method} {current}: HTTP {status} redirect from HTTPS to plain HTTP ({target}) "
                                "refused", status)
        if parts.scheme == "http" and not self._plain_http_allowed(parts.authority):
            raise RegistryError(f"{method} {current}: HTTP {status} redirect to plain HTTP ({target}) refused: "
                                "that host is neither loopback nor named insecure", status)
        return target

    def _request(
        self,
        method: str,
        ref: Reference,
        path: str,
        *,
        headers: Mapping[str, str] | None = None,
        body: Callable[[], Any] | None = None,
        scope_actions: str = "pull",
        absolute_url: str = "",
    ) -> Exchange:
        """One logical request with auth, redirects and retries; returns the exchange (status < 400 or 404),
        whose body the caller reads through its caps and then closes."""
        host = ref.api_host
        base = self._base_for(ref)
        url = absolute_url or base + path
        key = (host, ref.repository)
        last_error = ""
        reauthenticated = False
        attempt = 0
        while True:
            attempt += 1
            credential = (_origin(base), self._auth[key]) if key in self._auth else None
            try:
                exchange = self._send(method, url, headers or {}, body, credential)
            except TLSFailed as exc:
                raise RegistryError(f"{method} {url}: {exc}") from None
            except TransportError as exc:
                last_error = str(exc)
            else:
                status = exchange.status
                from_registry = _origin(exchange.url) == _origin(base)
                if status == 401 and not reauthenticated and from_registry:
                    challenge = exchange.headers.get("WWW-Authenticate", "")
                    exchange.discard()
                    self._auth[key] = self._authenticate(ref, challenge, url, scope_actions)
                    reauthenticated = True
                    attempt -= 1
                    continue
                if status in RETRY_STATUSES and attempt < self.attempts:
                    last_error = f"HTTP {status} {_registry_message(*exchange.error_text())}"
                    retry_after = exchange.headers.get("Retry-After")
                    exchange.close()
                    self._sleep(self._delay(attempt, retry_after))
                    continue
                if status >= 400 and status != 404:
                    message = _registry_message(*exchange.error_text())
                    exchange.close()
                    hint = " (credentials were refused)" if status in (401, 403) else ""
                    tries = f" (after {attempt} attempts)" if attempt > 1 else ""
                    where = url if exchange.url == url else f"{url} (redirected to {exchange.url})"
                    raise RegistryError(f"{method} {where}: HTTP {status}{hint}: {message}{tries}", status)
                return exchange
            if attempt >= self.attempts:
                raise RegistryError(f"{method} {url}: {last_error} (after {attempt} attempts)")
            self._sleep(self._delay(attempt, None))

    def _delay(self, attempt: int, retry_after: str | None) -> float:
        if retry_after and retry_after.isdigit():
            return min(float(retry_after), 30.0)
        import random  # only a retry needs it

        return self.backoff * (2 ** (attempt - 1)) * (0.5 + random.random() / 2)

    def _authenticate(self, ref: Reference, header: str, url: str, actions: str) -> str:
        if not header:
            raise RegistryError(f"{url}: HTTP 401 without a WWW-Authenticate challenge", 401)
        try:
            credential = self.credentials.lookup(ref.registry)
        except AuthError as exc:
            raise RegistryError(str(exc)) from None
        challenge = parse_challenge(header)
        if challenge.scheme == "basic":
            if credential is None or not credential.username:
                raise RegistryError(f"{url}: the registry asks for a username and password and there are none for "
                                    f"{ref.registry} in {self.credentials.source or 'the docker config'}", 401)
            return credential.basic()
        if challenge.scheme == "bearer":
            return "Bearer " + self._token(ref, challenge.params, credential, actions)
        raise RegistryError(f"{url}: unsupported authentication scheme {challenge.scheme!r}", 401)

    def _token(self, ref: Reference, params: Mapping[str, str], credential: Credential | None, actions: str) -> str:
        realm = params.get("realm", "")
        if not realm.startswith(("https://", "http://")):
            raise RegistryError(f"{ref.registry}: bearer challenge has no usable realm ({realm!r})", 401)
        if len(realm) > URL_LIMIT:
            raise RegistryError(f"{ref.registry}: bearer challenge realm of {len(realm)} characters, over the "
                                f"{URL_LIMIT} character limit", 401)
        try:
            realm_authority = split_url(realm).authority
        except URLError as exc:
            raise RegistryError(f"{ref.registry}: bearer challenge realm {realm[:300]!r}: {exc}", 401) from None
        if realm.startswith("http://") and not self._plain_http_allowed(realm_authority):
            raise RegistryError(f"{ref.registry}: refusing to send credentials to a plain-HTTP token realm {realm}")
        scope = params.get("scope") or (f"repository:{ref.repository}:{actions}" if ref.repository else "")
        query = {"service": params.get("service", "")}
        if scope:
            query["scope"] = scope
        headers: dict[str, str] = {}
        authorization: tuple[tuple[str, str, int], str] | None = None
        if credential is not None and credential.identity_token:
            form = encode_query({**query, "grant_type": "refresh_token", "refresh_token": credential.identity_token,
                              "client_id": "wasm-shim"}).encode()
            method, url, body = "POST", realm, (lambda: form)
            headers["Content-Type"] = "application/x-www-form-urlencoded"
        else:
            if credential is not None and credential.username:
                authorization = (_origin(realm), credential.basic())
            method, url, body = "GET", realm + ("&" if "?" in realm else "?") + encode_query(query), None
        what = f"token endpoint {realm}"
        try:
            exchange = self._send(method, url, headers, body, authorization)
        except TransportError as exc:
            raise RegistryError(f"{what}: {exc}") from None
        with exchange:
            if exchange.status != 200:
                raise RegistryError(f"{what} for {scope}: HTTP {exchange.status}: "
                                    f"{_registry_message(*exchange.error_text())}", exchange.status)
            data = exchange.read(TOKEN_RESPONSE_LIMIT, f"{what}: the token response")
        try:
            doc = loads(data)
            token = doc.get("token") or doc.get("access_token")
        except (ValueError, AttributeError):
            token = None
        if not isinstance(token, str) or not token:
            raise RegistryError(f"{what} answered without a token")
        return token

    def check_login(self, registry: str) -> None:
        """`GET /v2/` with the credentials this client finds for `registry`, as `docker login` and `oras login` do
        before they save any: RegistryError naming the registry when they are refused (or it cannot be asked)."""
        ref = Reference(registry, "")
        url = self._base_for(ref) + "/v2/"
        authorization: tuple[tuple[str, str, int], str] | None = None
        for _ in range(2):
            try:
                exchange = self._send("GET", url, {}, None, authorization)
            except TransportError as exc:
                raise RegistryError(f"GET {url}: {exc}") from None
            with exchange:
                status, challenge = exchange.status, exchange.headers.get("WWW-Authenticate", "")
                message = _registry_message(*exchange.error_text()) if status >= 400 else ""
            if status == 200:
                return
            if status != 401 or authorization is not None:
                hint = " (credentials were refused)" if status in (401, 403) else ""
                raise RegistryError(f"{registry}: GET {url}: HTTP {status}{hint}: {message}", status)
            authorization = (_origin(url), self._authenticate(ref, challenge, url, "pull"))
        raise RegistryError(f"{registry}: GET {url}: the credentials were not accepted")

    # -- manifests ---------------------------------------------------------------------------------------------
    def get_manifest(self, ref: Reference, *, accept: str = MANIFEST_ACCEPT) -> Manifest:
        """The manifest or index `ref` names, exactly as stored, digest-checked."""
        path = f"/v2/{ref.repository}/manifests/{ref.identifier}"
        with self._request("GET", ref, path, headers={"Accept": accept}) as exchange:
            if exchange.status == 404:
                raise NotFoundError(f"{ref}: manifest not found in {ref.registry}", 404)
            claimed = exchange.headers.get("Docker-Content-Digest", "")
            content_type = exchange.headers.get("Content-Type", "")
            data = exchange.read(MANIFEST_LIMIT, f"{ref}: the manifest")
        digest = sha256_digest(data)
        if ref.digest and digest != ref.digest:
            raise DigestMismatch(f"{ref}: the registry sent a manifest whose digest is {digest}")
        if claimed and claimed != digest:
            raise DigestMismatch(f"{ref}: the registry says the manifest is {claimed} but its content is {digest}")
        media_type = content_type.split(";")[0].strip()
        try:
            declared_type = loads(data).get("mediaType")
        except (ValueError, AttributeError):
            raise ManifestError(f"{ref}: the manifest is not a JSON object") from None
        if isinstance(declared_type, str) and declared_type:
            media_type = declared_type
        return Manifest(media_type, data, digest)

    def resolve(self, ref: Reference) -> Descriptor:
        """The descriptor of the manifest `ref` names (a HEAD, or a GET when the registry gives no digest)."""
        with self._request("HEAD", ref, f"/v2/{ref.repository}/manifests/{ref.identifier}",
                           headers={"Accept": MANIFEST_ACCEPT}) as exchange:
            status, headers = exchange.status, exchange.headers
        if status == 404:
            raise NotFoundError(f"{ref}: manifest not found in {ref.registry}", 404)
        digest = headers.get("Docker-Content-Digest", "")
        size = headers.get("Content-Length", "")
        media_type = headers.get("Content-Type", "").split(";")[0].strip()
        if digest and size.isdigit() and media_type and not ref.digest:
            return Descriptor(media_type, check_digest(digest, f"{ref}: Docker-Content-Digest"), int(size))
        return self.get_manifest(ref).descriptor()

    def put_manifest(self, ref: Reference, identifier: str, data: bytes, media_type: str) -> tuple[str, bool]:
        """Upload `data` as is under a tag or its digest; (digest, whether the registry reported OCI-Subject)."""
        digest = sha256_digest(data)
        exchange = self._request("PUT", ref, f"/v2/{ref.repository}/manifests/{identifier}",
                                 headers={"Content-Type": media_type}, body=lambda: data, scope_actions="pull,push")
        status, headers = exchange.status, exchange.headers
        exchange.discard()
        if status != 201:
            raise RegistryError(f"PUT {ref.name}/manifests/{identifier}: HTTP {status}", status)
        stored = headers.get("Docker-Content-Digest", "")
        if stored and stored != digest:
            raise DigestMismatch(f"{ref.name}: the registry stored the manifest as {stored}, its bytes are {digest}")
        return digest, "OCI-Subject" in headers

    # -- blobs -------------------------------------------------------------------------------------------------
    def blob_exists(self, ref: Reference, digest: str) -> bool:
        with self._request("HEAD", ref, f"/v2/{ref.repository}/blobs/{digest}") as exchange:
            return exchange.status == 200

    def fetch_blob(self, ref: Reference, descriptor: Descriptor, sink: IO[bytes], *, label: str = "") -> None:
        """Stream the blob into `sink` (seekable; rewritten from the start on a retry), verified as it streams.
        On DigestMismatch the sink holds unchecked bytes: the caller discards it."""
        path = f"/v2/{ref.repository}/blobs/{descriptor.digest}"
        what = f"blob {descriptor.digest} of {ref.name}"
        for attempt in range(1, self.attempts + 1):
            sink.seek(0)
            sink.truncate()
            verifier = StreamVerifier(descriptor.digest, descriptor.size, what)
            with self._request("GET", ref, path) as exchange:
                if exchange.status == 404:
                    raise NotFoundError(f"{what}: not found", 404)
                declared = exchange.declared_length()
                if declared is not None and declared > descriptor.size:
                    raise DigestMismatch(f"{what}: the registry announces {declared} bytes, more than the "
                                         f"{descriptor.size} bytes its descriptor says (not read)")
                progress = self.progress(label or descriptor.digest[7:19], descriptor.size)
                try:
                    for chunk in exchange.chunks(CHUNK, what):
                        verifier.update(chunk)
                        sink.write(chunk)
                        progress.advance(len(chunk))
                    verifier.finish()
                    return
                except RegistryError as exc:
                    if exchange.deadline.expired or attempt >= self.attempts:
                        tries = f" (after {attempt} attempts)" if attempt > 1 else ""
                        raise RegistryError(f"{exc}{tries}") from None
                finally:
                    progress.close()
            self._sleep(self._delay(attempt, None))

    def fetch_blob_bytes(self, ref: Reference, descriptor: Descriptor, limit: int) -> bytes:
        """A small blob (a config, a signature payload, a bundle) in memory, verified; refused over `limit`."""
        import io

        if descriptor.size > limit:
            raise RegistryError(f"blob {descriptor.digest} of {ref.name} has size {descriptor.size}; "
                                f"the limit for this kind of blob is {limit}")
        buffer = io.BytesIO()
        self.fetch_blob(ref, descriptor, buffer)
        return buffer.getvalue()

    def push_blob(self, ref: Reference, descriptor: Descriptor, opener: Callable[[], IO[bytes] | bytes], *,
                  label: str = "") -> bool:
        """Upload a blob (monolithic: POST then PUT ?digest=); False when the registry has it already.
        `opener` gives the bytes or a fresh file object for each attempt."""
        if self.blob_exists(ref, descriptor.digest):
            return False
        exchange = self._request("POST", ref, f"/v2/{ref.repository}/blobs/uploads/",
                                 headers={"Content-Length": "0"}, scope_actions="pull,push")
        status, location = exchange.status, exchange.headers.get("Location", "")
        exchange.discard()
        if status != 202 or not location:
            raise RegistryError(f"POST {ref.name}/blobs/uploads/: HTTP {status} without an upload location", status)
        if len(location) > URL_LIMIT:
            raise RegistryError(f"POST {ref.name}/blobs/uploads/: an upload location of {len(location)} characters, "
                                f"over the {URL_LIMIT} character limit")
        url = join(self._base_for(ref) + "/", location)
        url += ("&" if "?" in url.partition("#")[0] else "?") + encode_query({"digest": descriptor.digest})
        progress = self.progress(label or descriptor.digest[7:19], descriptor.size)

        def body() -> bytes | IO[bytes] | _CountingReader:
            source = opener()
            return source if isinstance(source, bytes) else _CountingReader(source, progress)

        try:
            exchange = self._request("PUT", ref, "", absolute_url=url, body=body, scope_actions="pull,push",
                                     headers={"Content-Type": "application/octet-stream",
                                              "Content-Length": str(descriptor.size)})
        finally:
            progress.close()
        status, stored = exchange.status, exchange.headers.get("Docker-Content-Digest", "")
        message = _registry_message(*exchange.error_text()) if status != 201 else ""
        exchange.close()
        if status != 201:
            raise RegistryError(f"uploading blob {descriptor.digest} to {ref.name}: HTTP {status}: {message}", status)
        if stored and stored != descriptor.digest:
            raise DigestMismatch(f"{ref.name}: the registry stored blob {descriptor.digest} as {stored}")
        return True

    # -- listings ----------------------------------------------------------------------------------------------
    def _pages(self, ref: Reference, path: str, what: str,
               headers: Mapping[str, str] | None = None) -> Iterator[tuple[int, str, bytes]]:
        """(status, content type, body) of each page of a listing, following `Link: <...>; rel="next"` on the
        registry's own origin, LISTING_LIMIT bytes and LISTING_PAGES pages at most over all pages."""
        base = self._base_for(ref)
        url = base + path
        budget = LISTING_LIMIT
        for _ in range(LISTING_PAGES):
            with self._request("GET", ref, "", absolute_url=url, headers=headers) as exchange:
                status = exchange.status
                content_type = exchange.headers.get("Content-Type", "").split(";")[0].strip()
                link = exchange.headers.get("Link", "")
                data = b""
                if status == 200:
                    data = exchange.read(budget, f"{what} (all pages together)")
            budget -= len(data)
            yield status, content_type, data
            if status != 200 or 'rel="next"' not in link:
                return
            if len(link) > URL_LIMIT:
                raise RegistryError(f"{what}: a pagination link of {len(link)} characters, over the {URL_LIMIT} "
                                    "character limit")
            following = join(url, link.split(";")[0].strip().strip("<>"))
            if _origin(following) != _origin(base):
                raise RegistryError(f"{what}: the pagination link {following} leaves the registry ({base}); "
                                    "not followed")
            url = following
        raise RegistryError(f"{what}: more than {LISTING_PAGES} pages (the page limit)")

    def list_tags(self, ref: Reference) -> list[str]:
        tags: list[str] = []
        for status, _, data in self._pages(ref, f"/v2/{ref.repository}/tags/list", f"the tag list of {ref.name}"):
            if status == 404:
                raise NotFoundError(f"{ref.name}: repository not found", 404)
            try:
                page = loads(data).get("tags") or []
            except (ValueError, AttributeError):
                raise RegistryError(f"{ref.name}: the tag list is not JSON {{name, tags}}") from None
            tags.extend(t for t in page if isinstance(t, str))
        return tags

    def referrers(self, ref: Reference, subject: str, artifact_type: str = "") -> list[Descriptor]:
        """Manifests whose `subject` is `subject`: the referrers API, else the `sha256-<hex>` fallback tag."""
        check_digest(subject, "referrers subject")
        found: list[Descriptor] | None = []
        what = f"the referrers of {ref.name}@{subject}"
        for status, content_type, data in self._pages(ref, f"/v2/{ref.repository}/referrers/{subject}", what):
            if status != 200 or content_type != MEDIA_TYPE_INDEX:
                found = None  # no referrers API here (distribution 2.8 answers a plain-text 404)
                break
            assert found is not None
            index = parse_json_object(data, f"referrers index of {ref.name}@{subject}")
            found.extend(descriptors_of(index, "manifests", f"referrers index of {ref.name}@{subject}"))
        if found is None:
            found = self._fallback_referrers(ref, subject)
        return [d for d in found if not artifact_type or d.artifact_type == artifact_type]

    def _fallback_referrers(self, ref: Reference, subject: str) -> list[Descriptor]:
        tag_ref = ref.with_tag(fallback_tag(subject))
        try:
            index = self.get_manifest(tag_ref)
        except NotFoundError:
            return []
        doc = index.json(f"referrers fallback index {tag_ref}")
        if doc.get("mediaType", index.media_type) not in INDEX_TYPES:
            raise ManifestError(f"{tag_ref}: the referrers fallback tag holds a {index.media_type}, not an index")
        return descriptors_of(doc, "manifests", f"referrers fallback index {tag_ref}")

    def add_fallback_referrer(self, ref: Reference, subject: str, entry: Descriptor) -> None:
        """Add `entry` to the `sha256-<hex>` index (for registries without the referrers API)."""
        tag_ref = ref.with_tag(fallback_tag(subject))
        try:
            doc = self.get_manifest(tag_ref).json(f"referrers fallback index {tag_ref}")
        except NotFoundError:
            doc = {"schemaVersion": 2, "mediaType": MEDIA_TYPE_INDEX, "manifests": []}
        existing = descriptors_of(doc, "manifests", f"referrers fallback index {tag_ref}")
        if any(d.digest == entry.digest for d in existing):
            return
        doc["manifests"] = [*(d.to_json() for d in existing), entry.to_json()]
        self.put_manifest(ref, tag_ref.tag, canonical_json(doc), MEDIA_TYPE_INDEX)


def fallback_tag(digest: str) -> str:
    """distribution-spec "Referrers Tag Schema": `<alg>-<ref>` of the subject digest."""
    return check_digest(digest).replace(":", "-")


class _CountingReader:
    """A file object for a request body that reports progress as it is read."""

    def __init__(self, source: IO[bytes], progress: Progress) -> None:
        self._source = source
        self._progress = progress

    def read(self, size: int = -1) -> bytes:
        data = self._source.read(size)
        self._progress.advance(len(data))
        return data

    def seekable(self) -> bool:
        return self._source.seekable()

    def tell(self) -> int:
        return self._source.tell()

    def seek(self, position: int) -> int:
        return self._source.seek(position)

    def close(self) -> None:
        self._source.close()
