"""Image references (`REGISTRY/REPOSITORY[:TAG][@DIGEST]`) and digests: parsing, default registry rules, naming.

Owns `Reference` (pure: no I/O) and the digest rules every other module of the registry side uses.

Rules (distribution/reference's grammar and its docker normalisation, which oras, cosign and containerd share):
- The first path component is a registry when it contains `.` or `:`, is `localhost`, or has an upper-case
  letter; otherwise the registry is `docker.io`, and a one-component repository on docker.io gets `library/`.
- Repository components are lower-case `[a-z0-9]+` joined by `.`, `_`, `__` or runs of `-`; the whole name is
  at most 255 characters. A tag is `[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}`. A digest is `sha256:` and 64 lower-case
  hex digits (the only algorithm this project accepts, image-spec descriptor.md "Registered algorithms").
- No tag and no digest means the tag `latest`. With both, the digest is what is fetched (the tag is informative).
- `docker.io`'s API lives at `registry-1.docker.io`; `name` keeps `docker.io` (what cosign signs as
  `docker-reference` differs only for docker.io, and verification does not depend on it). `docker.io`,
  `index.docker.io` and `registry-1.docker.io`, in any letter case and with or without `:443`, all parse as
  `docker.io`.
- Comparisons (the signature policy's rules, the node's artifact registries) use `canonical_name`: the registry
  host in lower case (DNS names and IP literals are case-insensitive, RFC 4343) without the HTTPS default port
  `:443` (RFC 9110 section 4.2.2: `host` and `host:443` are one https origin), docker.io's aliases as
  `docker.io`, and `library/` for docker.io's one-component names. `registry` itself stays as written: it is
  what the client connects to.

Invariant: a `Reference` that exists is valid; `parse_reference` raises ReferenceError naming the bad part.
"""

from __future__ import annotations

from .values import Value

DEFAULT_REGISTRY = "docker.io"
DOCKER_API_HOST = "registry-1.docker.io"
DOCKER_ALIASES = frozenset({DEFAULT_REGISTRY, "index.docker.io", DOCKER_API_HOST})
DEFAULT_TAG = "latest"
HTTPS_DEFAULT_PORT = ":443"

# The grammar's character classes (ASCII only, as the regular expressions of distribution/reference are).
_LOWER_ALNUM = frozenset("abcdefghijklmnopqrstuvwxyz0123456789")
_ALNUM = _LOWER_ALNUM | frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZ")
_TAG_FIRST = _ALNUM | {"_"}
_TAG_REST = _TAG_FIRST | {".", "-"}
_HEX_LOWER = frozenset("0123456789abcdef")
_DIGITS = frozenset("0123456789")
_ADDRESS = frozenset("0123456789abcdefABCDEF:.")

# The rules are written out rather than as regular expressions: `re` (with `enum`) is milliseconds of imports on
# every CLI start. tests/unit/test_oci_reference.py holds each to the regular expression it replaces:
#   component   [a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*
#   repository  component(?:/component)*
#   tag         [A-Za-z0-9_][A-Za-z0-9_.-]{0,127}
#   digest      sha256:[0-9a-f]{64}
#   registry    (?:label(?:\.label)*|\[[0-9A-Fa-f:.]+\])(?::[0-9]+)?   label: [A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?


def _is_component(text: str) -> bool:
    i, n = 0, len(text)
    while True:
        start = i
        while i < n and text[i] in _LOWER_ALNUM:
            i += 1
        if i == start:
            return False  # every separator is followed by, and the component starts with, [a-z0-9]+
        if i == n:
            return True
        if text[i] == ".":
            i += 1
        elif text[i] == "_":
            i += 2 if text[i + 1:i + 2] == "_" else 1
        elif text[i] == "-":
            while i < n and text[i] == "-":
                i += 1
        else:
            return False


def is_repository(text: str) -> bool:
    return all(_is_component(part) for part in text.split("/"))


def is_tag(text: str) -> bool:
    return 0 < len(text) <= 128 and text[0] in _TAG_FIRST and all(c in _TAG_REST for c in text[1:])


def is_digest(text: str) -> bool:
    return len(text) == 71 and text.startswith("sha256:") and all(c in _HEX_LOWER for c in text[7:])


def _is_label(text: str) -> bool:
    return bool(text) and text[0] in _ALNUM and text[-1] in _ALNUM and all(c in _ALNUM or c == "-" for c in text)


def is_registry(text: str) -> bool:
    if text.startswith("["):
        end = text.find("]")
        address, port = text[1:end], text[end + 1:]
        if end < 0 or not address or not all(c in _ADDRESS for c in address):
            return False
    else:
        host, colon, rest = text.partition(":")
        if not all(_is_label(label) for label in host.split(".")):
            return False
        port = colon + rest
    return not port or (port[0] == ":" and len(port) > 1 and all(c in _DIGITS for c in port[1:]))


class ReferenceError(ValueError):
    """A string is not a valid image reference or digest; the message names the bad part."""


def check_digest(value: str, what: str = "digest") -> str:
    """`value` if it is `sha256:<64 lower-case hex>`, else ReferenceError naming `what`."""
    if not isinstance(value, str) or not is_digest(value):
        raise ReferenceError(f"{what} {value!r} is not a sha256 digest (sha256:<64 lower-case hex digits>)")
    return value


class Reference(Value):
    __slots__ = ("registry", "repository", "tag", "digest")
    registry: str
    repository: str
    tag: str
    digest: str

    def __init__(self, registry: str, repository: str, tag: str = "", digest: str = "") -> None:
        self._init(registry, repository, tag, digest)

    @property
    def name(self) -> str:
        """REGISTRY/REPOSITORY: what policy globs match and what cosign calls the docker-reference."""
        return f"{self.registry}/{self.repository}"

    @property
    def canonical_name(self) -> str:
        """REGISTRY/REPOSITORY as compared: the registry as `canonical_registry` spells it."""
        return f"{canonical_registry(self.registry)}/{self.repository}"

    @property
    def api_host(self) -> str:
        """host[:port] of the registry's HTTP API."""
        return DOCKER_API_HOST if self.registry == DEFAULT_REGISTRY else self.registry

    @property
    def identifier(self) -> str:
        """What goes after /manifests/: the digest when there is one, else the tag."""
        return self.digest or self.tag or DEFAULT_TAG

    def with_digest(self, digest: str) -> Reference:
        return Reference(self.registry, self.repository, self.tag, check_digest(digest))

    def with_tag(self, tag: str) -> Reference:
        if not is_tag(tag):
            raise ReferenceError(f"tag {tag!r} is not valid ([A-Za-z0-9_][A-Za-z0-9_.-]{{0,127}})")
        return Reference(self.registry, self.repository, tag, "")

    def __str__(self) -> str:
        text = self.name
        if self.tag:
            text += f":{self.tag}"
        if self.digest:
            text += f"@{self.digest}"
        return text


def is_registry_component(part: str) -> bool:
    return "." in part or ":" in part or part == "localhost" or part != part.lower()


def canonical_registry(host: str) -> str:
    """`host[:port]` as registries are compared: lower case, no `:443`, docker.io for docker.io's aliases."""
    host = host.lower()
    if host.endswith(HTTPS_DEFAULT_PORT):
        host = host[: -len(HTTPS_DEFAULT_PORT)]
    return DEFAULT_REGISTRY if host in DOCKER_ALIASES else host


def canonical_name(name: str) -> str:
    """A REGISTRY/REPOSITORY name (or a whole reference) as compared (see the module rules); a string that is
    not an image name is returned unchanged, so it matches only what is spelled exactly like it."""
    try:
        return parse_reference(name, default_tag=False).canonical_name
    except ReferenceError:
        return name


def parse_reference(text: str, *, default_tag: bool = True) -> Reference:
    """Parse an image reference; the tag defaults to `latest` when neither tag nor digest is given
    (unless `default_tag` is False, for commands that take a bare repository)."""
    if not isinstance(text, str) or not text or any(c.isspace() for c in text):
        raise ReferenceError(f"image reference {text!r} is empty or contains whitespace")
    rest, digest = text, ""
    if "@" in rest:
        rest, _, digest = rest.partition("@")
        check_digest(digest, f"digest of {text!r}:")
    tag = ""
    slash = rest.rfind("/")
    colon = rest.rfind(":")
    if colon > slash:
        rest, tag = rest[:colon], rest[colon + 1:]
        if not is_tag(tag):
            raise ReferenceError(f"image reference {text!r}: tag {tag!r} is not valid "
                                 "([A-Za-z0-9_][A-Za-z0-9_.-]{0,127})")
    first, sep, remainder = rest.partition("/")
    if sep and is_registry_component(first):
        registry, repository = first, remainder
        if not is_registry(registry):
            raise ReferenceError(f"image reference {text!r}: registry {registry!r} is not a valid host[:port]")
    else:
        registry, repository = DEFAULT_REGISTRY, rest
    if canonical_registry(registry) == DEFAULT_REGISTRY:
        registry = DEFAULT_REGISTRY
    if registry == DEFAULT_REGISTRY and "/" not in repository:
        repository = f"library/{repository}"
    if not is_repository(repository) or len(registry) + 1 + len(repository) > 255:
        raise ReferenceError(f"image reference {text!r}: repository {repository!r} is not valid (lower-case "
                             "letters, digits and separators . _ __ -, components joined by /)")
    if not tag and not digest and default_tag:
        tag = DEFAULT_TAG
    return Reference(registry, repository, tag, digest)
