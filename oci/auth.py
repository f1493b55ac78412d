"""Registry credentials and authentication challenges.

Owns: `DockerCredentials` (the docker CLI's config as oras, cosign and crane read it: `$DOCKER_CONFIG/config.json`,
else `~/.docker/config.json`; `credHelpers` per registry, then `credsStore`, then `auths`), `Credential`, and
`parse_challenge` (pure: RFC 7235 `WWW-Authenticate`, the distribution token spec's Bearer realm/service/scope).

Rules:
- `auths` keys may be `host`, `host:port` or a URL (`https://index.docker.io/v1/` is docker.io's); they are
  compared by host[:port]. An entry gives `auth` (base64 `user:password`), or `username`/`password`, or an
  `identitytoken` (an OAuth2 refresh token, sent to the token endpoint).
- A credential helper is the program `docker-credential-<name>`, run as `get` with the server on stdin; it answers
  JSON {ServerURL, Username, Secret}; Username `<token>` means Secret is an identity token. It runs with a timeout.
- No credentials is not an error here: anonymous access is tried, and the registry's 401 is what the user sees.
- Storing (`store`, `erase`: what `wasm-shim login`/`logout` write, as `oras login`/`logout` and `docker login` do):
  through the registry's credential helper when `credHelpers` names one, else `credsStore`'s (the helper's `store`
  with JSON {ServerURL, Username, Secret} on stdin, `erase` with the server), else in `auths` (`auth`, base64 of
  user:password, or `identitytoken`). The server key is the registry's host[:port]; docker.io's is
  `https://index.docker.io/v1/`. The file is rewritten whole, atomically (a temporary file renamed), mode 0600,
  every other key kept as it was.
Invariant: secrets never appear in exceptions or logs; errors name the file or helper and what failed.
"""

from __future__ import annotations

import binascii
import os
from collections.abc import Mapping

from .jsoncodec import dumps, loads
from .values import Value

HELPER_TIMEOUT = 10.0
_DOCKER_HUB_KEYS = ("docker.io", "index.docker.io", "registry-1.docker.io")


class AuthError(Exception):
    """Credentials could not be read (a malformed config file, a failing helper); the message names which."""


def _b64(data: bytes) -> str:
    return binascii.b2a_base64(data, newline=False).decode()


class Credential(Value):
    __slots__ = ("username", "password", "identity_token")
    username: str
    password: str
    identity_token: str

    def __init__(self, username: str = "", password: str = "", identity_token: str = "") -> None:
        self._init(username, password, identity_token)

    def __repr__(self) -> str:  # never print a secret
        token = "***" if self.identity_token else ""
        return f"Credential(username={self.username!r}, password=***, identity_token={token})"

    def basic(self) -> str:
        return "Basic " + _b64(f"{self.username}:{self.password}".encode())


def _host_of(key: str) -> str:
    if "://" in key:
        from urllib.parse import urlsplit  # docker config keys: a login's or a 401's path, never a pull's

        key = urlsplit(key).netloc
    host = key.split("/", 1)[0]
    return "docker.io" if host in _DOCKER_HUB_KEYS else host


class DockerCredentials:
    """Looks credentials up per registry host; reads the config file once, at construction."""

    def __init__(self, config: Mapping[str, object] | None = None, source: str = "") -> None:
        self.source = source
        self._config = dict(config or {})

    @classmethod
    def from_environment(cls, environ: Mapping[str, str] | None = None, path: str = "") -> DockerCredentials:
        path = path or cls.config_file(environ)
        try:
            with open(path, encoding="utf-8") as f:
                text = f.read()
        except FileNotFoundError:
            return cls({}, path)
        except OSError as exc:
            raise AuthError(f"cannot read registry credentials from {path}: {exc.strerror}") from None
        try:
            config = loads(text)
        except ValueError as exc:
            raise AuthError(f"{path} is not valid JSON: {exc}") from None
        if not isinstance(config, dict):
            raise AuthError(f"{path}: expected a JSON object")
        return cls(config, path)

    @classmethod
    def config_file(cls, environ: Mapping[str, str] | None = None) -> str:
        env = os.environ if environ is None else environ
        directory = env.get("DOCKER_CONFIG") or os.path.join(env.get("HOME") or os.path.expanduser("~"), ".docker")
        return os.path.join(directory, "config.json")

    @staticmethod
    def server_key(registry: str) -> str:
        """The key docker, oras and cosign file a registry's credentials under."""
        host = _host_of(registry)
        return "https://index.docker.io/v1/" if host == "docker.io" else host

    def helper_for(self, registry: str) -> str:
        """The credential helper that holds `registry`'s credentials ("" = the file's `auths`)."""
        host = _host_of(registry)
        helpers = self._config.get("credHelpers") or {}
        if isinstance(helpers, dict):
            for key, helper in helpers.items():
                if _host_of(key) == host and isinstance(helper, str) and helper:
                    return helper
        store = self._config.get("credsStore")
        return store if isinstance(store, str) else ""

    def store(self, registry: str, credential: Credential) -> str:
        """Save `credential` for `registry` (see the module rules); returns where ("helper X" or the file)."""
        helper = self.helper_for(registry)
        server = self.server_key(registry)
        if helper:
            user = "<token>" if credential.identity_token and not credential.username else credential.username
            secret = credential.identity_token if user == "<token>" else credential.password
            payload = dumps({"ServerURL": server, "Username": user, "Secret": secret}).encode()
            self._run_helper(helper, "store", payload, registry)
            self._drop_entry(server)  # a helper holds it now: no stale copy in the file
            return f"credential helper docker-credential-{helper}"
        auths = self._config.get("auths")
        if not isinstance(auths, dict):
            auths = {}
        for key in [k for k in auths if _host_of(k) == _host_of(registry)]:
            del auths[key]
        entry: dict[str, str] = {}
        if credential.username:
            entry["auth"] = _b64(f"{credential.username}:{credential.password}".encode())
        if credential.identity_token:
            entry["identitytoken"] = credential.identity_token
        auths[server] = entry
        self._config["auths"] = auths
        self._write()
        return self.source

    def erase(self, registry: str) -> bool:
        """Remove `registry`'s credentials (helper or file); False when there were none."""
        helper = self.helper_for(registry)
        server = self.server_key(registry)
        if helper:
            removed = self._run_helper(helper, "erase", server.encode(), registry, missing_ok=True)
            return self._drop_entry(server) or removed
        return self._drop_entry(server)

    def _drop_entry(self, server: str) -> bool:
        auths = self._config.get("auths")
        if not isinstance(auths, dict):
            return False
        keys = [k for k in auths if _host_of(k) == _host_of(server)]
        for key in keys:
            del auths[key]
        if keys:
            self._write()
        return bool(keys)

    def _write(self) -> None:
        if not self.source:
            raise AuthError("no docker config file to write credentials to")
        directory = os.path.dirname(self.source)
        try:
            os.makedirs(directory, mode=0o700, exist_ok=True)
            temporary = f"{self.source}.{os.getpid()}.tmp"
            fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                f.write(dumps(self._config, indent="\t"))
                f.write("\n")
            os.replace(temporary, self.source)
        except OSError as exc:
            raise AuthError(f"cannot write registry credentials to {self.source}: {exc.strerror}") from None

    def _run_helper(self, helper: str, action: str, payload: bytes, registry: str, missing_ok: bool = False) -> bool:
        _check_helper_name(helper, self.source)
        import subprocess

        program = f"docker-credential-{helper}"
        try:
            done = subprocess.run([program, action], input=payload, capture_output=True, timeout=HELPER_TIMEOUT,
                                  check=False)
        except FileNotFoundError:
            raise AuthError(f"credential helper {program} (named in {self.source}) is not on PATH") from None
        except subprocess.TimeoutExpired:
            raise AuthError(f"credential helper {program} did not answer `{action}` for {registry} within "
                            f"{HELPER_TIMEOUT:.0f}s") from None
        if done.returncode != 0:
            message = (done.stdout or done.stderr).decode(errors="replace").strip()
            if missing_ok and "credentials not found" in message.lower():
                return False
            raise AuthError(f"credential helper {program} failed to {action} credentials for {registry} (exit "
                            f"{done.returncode}): {message[:200]}")
        return True

    def lookup(self, registry: str) -> Credential | None:
        host = _host_of(registry)
        helpers = self._config.get("credHelpers") or {}
        if isinstance(helpers, dict):
            for key, helper in helpers.items():
                if _host_of(key) == host and isinstance(helper, str) and helper:
                    return self._from_helper(helper, host)
        auths = self._config.get("auths") or {}
        entry = None
        if isinstance(auths, dict):
            for key, value in auths.items():
                if _host_of(key) == host and isinstance(value, dict):
                    entry = value
                    break
        if entry is not None:
            credential = self._from_entry(entry, host)
            if credential is not None:
                return credential
        store = self._config.get("credsStore")
        if isinstance(store, str) and store:
            return self._from_helper(store, host)
        return None

    def _from_entry(self, entry: Mapping[str, object], host: str) -> Credential | None:
        token = entry.get("identitytoken")
        auth = entry.get("auth")
        if isinstance(auth, str) and auth:
            try:
                user, sep, password = binascii.a2b_base64(auth.encode(), strict_mode=True).decode().partition(":")
            except (ValueError, UnicodeDecodeError):
                raise AuthError(f"{self.source}: auths entry for {host}: `auth` is not base64 of user:password") \
                    from None
            if not sep:
                raise AuthError(f"{self.source}: auths entry for {host}: `auth` has no ':' between user and password")
            return Credential(user, password, token if isinstance(token, str) else "")
        name, secret = entry.get("username"), entry.get("password")
        if isinstance(name, str) and isinstance(secret, str) and name:
            return Credential(name, secret, token if isinstance(token, str) else "")
        if isinstance(token, str) and token:
            return Credential("", "", token)
        return None

    def _from_helper(self, helper: str, host: str) -> Credential | None:
        _check_helper_name(helper, self.source)
        import subprocess  # here: only a helper needs it (the CLI's start pays for every import)

        program = f"docker-credential-{helper}"
        server = "https://index.docker.io/v1/" if host == "docker.io" else host
        try:
            done = subprocess.run([program, "get"], input=server.encode(), capture_output=True,
                                  timeout=HELPER_TIMEOUT, check=False)
        except FileNotFoundError:
            raise AuthError(f"credential helper {program} (named in {self.source}) is not on PATH") from None
        except subprocess.TimeoutExpired:
            raise AuthError(f"credential helper {program} did not answer for {host} within {HELPER_TIMEOUT:.0f}s") \
                from None
        if done.returncode != 0:
            message = done.stdout.decode(errors="replace").strip()
            if "credentials not found" in message.lower():
                return None
            raise AuthError(f"credential helper {program} failed for {host} (exit {done.returncode}): "
                            f"{(message or done.stderr.decode(errors='replace').strip())[:200]}")
        try:
            answer = loads(done.stdout)
            user, secret = str(answer.get("Username", "")), str(answer["Secret"])
        except (ValueError, KeyError, AttributeError):
            raise AuthError(f"credential helper {program} answered for {host} with something that is not "
                            "JSON {ServerURL, Username, Secret}") from None
        if user == "<token>":
            return Credential("", "", secret)
        return Credential(user, secret)


class Challenge(Value):
    __slots__ = ("scheme", "params")
    scheme: str  # lower case: "basic" or "bearer"
    params: Mapping[str, str]

    def __init__(self, scheme: str, params: Mapping[str, str]) -> None:
        self._init(scheme, params)


# A challenge is parsed only after a 401, so the pattern is compiled then (re caches it), not at every CLI start.
_PARAM = r'\s*([A-Za-z0-9_.-]+)\s*=\s*(?:"((?:[^"\\]|\\.)*)"|([^\s,]*))\s*,?'


def _check_helper_name(helper: str, source: str) -> None:
    if not helper or not helper.isascii() or not all(c.isalnum() or c in "_.-" for c in helper):
        raise AuthError(f"{source}: credential helper name {helper!r} is not a plain program name")


def parse_challenge(header: str) -> Challenge:
    """The first challenge of a `WWW-Authenticate` header: scheme and parameters (quoted or token values)."""
    import re  # a 401's path only

    scheme, _, rest = header.strip().partition(" ")
    params: dict[str, str] = {}
    position = 0
    while position < len(rest):
        match = re.compile(_PARAM).match(rest, position)
        if not match or match.end() == position:
            break
        quoted = match.group(2)
        params[match.group(1).lower()] = re.sub(r"\\(.)", r"\1", quoted) if quoted is not None else match.group(3)
        position = match.end()
    return Challenge(scheme.lower(), params)
