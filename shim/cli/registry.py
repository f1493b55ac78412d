"""`wasm-shim push | pull | tags | login | logout | generate-key-pair | sign | verify | attest | verify-attestation`:
the registry, credential, signing and attestation commands.

Owns the argument parsing and the user-facing messages of these commands; the work is in oci/ (registry client,
transfers, keys, signatures). Exit status: 0 done, 1 failed (the message on stderr names what), 2 usage; `verify`
exits as cosign does: 10 when the image has no signature at all, 11 when the image is not there, 12 when it has
only `.sig` signatures and none verifies. Flags take
oras's and cosign's names (--ca-file, --plain-http, --registry-config, --new-bundle-format); `--format json` prints
one JSON document (oras's shapes for push, pull and tags).
Signing and verification are key-based and offline, like `cosign ... --key` with `--tlog-upload=false` /
`--insecure-ignore-tlog`: no transparency log, Fulcio or timestamp authority is contacted.
"""

from __future__ import annotations

import os
import sys

from .options import APPEND, FLAG, Arguments, Command, UsageError, bool_value, float_value

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Sequence
    from typing import Any

PASSWORD_ENV = "COSIGN_PASSWORD"


# cosign's exit statuses for `verify` (cmd/cosign/errors), as cosign 3.1 gives them: no signature at all; the image
# is not there; `.sig` signatures only, none valid. Every other failure is 1, as with cosign and oras; 2 is usage.
EXIT_NO_SIGNATURES = 10
EXIT_NO_SUCH_IMAGE = 11
EXIT_NO_MATCHING_SIGNATURE = 12


class CommandError(Exception):
    def __init__(self, message: str, status: int = 1) -> None:
        super().__init__(message)
        self.status = status


def _password(confirm: bool) -> bytes:
    if PASSWORD_ENV in os.environ:
        return os.environ[PASSWORD_ENV].encode()
    if not sys.stdin.isatty():
        raise CommandError(f"no password: set {PASSWORD_ENV} (no terminal to prompt on)")
    import getpass

    first = getpass.getpass("Enter password for private key: ")
    if confirm and getpass.getpass("Enter password for private key again: ") != first:
        raise CommandError("the passwords do not match")
    return first.encode()


def _client(args: Arguments, registry: str = "", credentials: Any = None):  # type: ignore[no-untyped-def]
    from wasm_shim.oci.auth import DockerCredentials
    from wasm_shim.oci.progress import terminal_progress
    from wasm_shim.oci.registry import RegistryClient

    insecure = tuple(args.insecure_registry or ())
    if args.plain_http and registry:
        insecure += (registry,)  # oras's --plain-http: the registry this command names
    return RegistryClient(credentials or DockerCredentials.from_environment(path=args.registry_config or ""),
                          ca_bundle=args.ca_bundle, insecure=insecure, read_timeout=args.timeout,
                          connect_timeout=min(args.timeout, 10.0), progress=terminal_progress())


def _ref(text: str):  # type: ignore[no-untyped-def]
    from wasm_shim.oci.reference import parse_reference

    return parse_reference(text)


def _read(path: str, what: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as exc:
        raise CommandError(f"cannot read {what} {path}: {exc.strerror}") from None


def _json(doc: object) -> None:
    import json

    sys.stdout.write(json.dumps(doc, indent=2) + "\n")


def _cmd_push(args: Arguments) -> int:
    from wasm_shim.oci.transfer import push_wasm_manifest

    annotations = {}
    for item in args.annotation or []:
        key, sep, value = item.partition("=")
        if not sep:
            raise CommandError(f"--annotation needs KEY=VALUE, got {item!r}")
        annotations[key] = value
    ref = _ref(args.reference)
    with _client(args, ref.registry) as client:
        pushed = push_wasm_manifest(client, args.file, ref, annotations=annotations)
    if args.format == "json":  # the shape of `oras push --format json`
        _json({"reference": f"{ref.name}@{pushed.digest}", "mediaType": pushed.media_type, "digest": pushed.digest,
               "size": pushed.size, "annotations": dict(pushed.annotations), "artifactType": pushed.artifact_type,
               "referenceAsTags": [f"{ref.name}:{ref.tag}"] if ref.tag and not ref.digest else []})
        return 0
    sys.stdout.write(f"{ref.name}@{pushed.digest}\n")
    return 0


def _cmd_pull(args: Arguments) -> int:
    from wasm_shim.oci.transfer import pull_wasm

    ref = _ref(args.reference)
    with _client(args, ref.registry) as client:
        pulled = pull_wasm(client, ref, args.output)
    if args.format == "json":  # the shape of `oras pull --format json`
        layer = pulled.layer
        _json({"reference": f"{ref.name}@{pulled.manifest_digest}", "files": [{
            "path": os.path.abspath(pulled.path), "reference": f"{ref.name}@{layer.digest}",
            "mediaType": layer.media_type, "digest": layer.digest, "size": layer.size,
            "annotations": dict(layer.annotations)}]})
        return 0
    sys.stdout.write(f"{pulled.path}: {pulled.layer.media_type} {pulled.layer.digest} ({pulled.layer.size} bytes) "
                     f"from {ref.name}@{pulled.manifest_digest}\n")
    return 0


def _cmd_tags(args: Arguments) -> int:
    from wasm_shim.oci.reference import parse_reference

    repository = parse_reference(args.repository, default_tag=False)
    with _client(args, repository.registry) as client:
        tags = client.list_tags(repository)
    if args.format == "json":  # the shape of `oras repo tags --format json`
        _json({"tags": tags})
        return 0
    for tag in tags:
        sys.stdout.write(tag + "\n")
    return 0


def _cmd_generate(args: Arguments) -> int:
    from wasm_shim.oci.keys import generate_key_pair, write_file_atomically

    private, public = f"{args.output_key_prefix}.key", f"{args.output_key_prefix}.pub"
    if not args.force:
        for path in (private, public):
            if os.path.lexists(path):
                raise CommandError(f"{path} exists; remove it or pass --force")
    pair = generate_key_pair(_password(confirm=True))
    write_file_atomically(private, pair.private_pem, 0o600, overwrite=True)
    write_file_atomically(public, pair.public_pem, 0o644, overwrite=True)
    sys.stderr.write(f"Private key written to {private}\nPublic key written to {public}\n")
    return 0


def _cmd_sign(args: Arguments) -> int:
    from wasm_shim.oci.cosign import sign_image
    from wasm_shim.oci.keys import load_private_key

    key = load_private_key(_read(args.key, "private key"), _password(confirm=False), args.key)
    ref = _ref(args.reference)
    fmt = _signature_format(args)
    with _client(args, ref.registry) as client:
        digest = sign_image(client, ref, key, format=fmt)
    if args.format == "json":
        _json({"reference": f"{ref.name}@{digest}", "digest": digest, "signatureFormat": fmt})
    sys.stderr.write(f"Signed {ref.name}@{digest} ({fmt} format)\n")
    return 0


def _cmd_verify(args: Arguments) -> int:
    from wasm_shim.oci.cosign import VerificationFailed, verify_image
    from wasm_shim.oci.errors import NotFoundError
    from wasm_shim.oci.keys import load_public_key

    keys = [load_public_key(_read(path, "public key"), path) for path in args.key]
    ref = _ref(args.reference)
    try:
        with _client(args, ref.registry) as client:
            verification = verify_image(client, ref, keys)
    except NotFoundError as exc:  # cosign's exit status for an image that is not there
        raise CommandError(str(exc), EXIT_NO_SUCH_IMAGE) from None
    except VerificationFailed as exc:
        status = EXIT_NO_SIGNATURES if exc.none_found else EXIT_NO_MATCHING_SIGNATURE if exc.only_legacy else 1
        raise CommandError(str(exc), status) from None
    if args.format == "json":
        _json({"reference": f"{ref.name}@{verification.digest}", "digest": verification.digest,
               "signatures": [{"format": s.format, "keyHint": s.key_hint} for s in verification.signatures]})
        return 0
    for signature in verification.signatures:
        sys.stdout.write(f"Verified {ref.name}@{verification.digest}: {signature.format} signature by key "
                         f"{signature.key_hint}\n")
    return 0


def _cmd_attest(args: Arguments) -> int:
    from wasm_shim.oci.attest import attest_image
    from wasm_shim.oci.cosign import created_now
    from wasm_shim.oci.intoto import predicate_from, predicate_type
    from wasm_shim.oci.keys import load_private_key

    try:
        type_uri = predicate_type(args.type)
    except ValueError as exc:
        raise CommandError(f"--type: {exc}") from None
    stamp = created_now()
    text = sys.stdin.buffer.read() if args.predicate == "-" else _read(args.predicate, "predicate")
    try:
        predicate = predicate_from(text, type_uri, stamp)
    except ValueError as exc:
        raise CommandError(f"--predicate {args.predicate}: {exc}") from None
    key = load_private_key(_read(args.key, "private key"), _password(confirm=False), args.key)
    ref = _ref(args.reference)
    fmt = _signature_format(args)
    with _client(args) as client:
        digest = attest_image(client, ref, key, type_uri, predicate, format=fmt)
    if args.format == "json":
        _json({"reference": f"{ref.name}@{digest}", "digest": digest, "predicateType": type_uri,
               "signatureFormat": fmt})
    sys.stderr.write(f"Attested {ref.name}@{digest}: {type_uri} ({fmt} format)\n")
    return 0


def _cmd_verify_attestation(args: Arguments) -> int:
    from wasm_shim.oci.attest import verify_attestations
    from wasm_shim.oci.intoto import parse_condition, predicate_type
    from wasm_shim.oci.keys import load_public_key

    try:
        type_uri = predicate_type(args.type)
    except ValueError as exc:
        raise CommandError(f"--type: {exc}") from None
    try:
        conditions = [parse_condition(text) for text in args.condition or ()]
    except ValueError as exc:
        raise CommandError(f"--condition: {exc}") from None
    keys = [load_public_key(_read(path, "public key"), path) for path in args.key]
    ref = _ref(args.reference)
    with _client(args, ref.registry) as client:
        verification = verify_attestations(client, ref, keys, type_uri, conditions)
    if args.format == "json":
        _json({"reference": f"{ref.name}@{verification.digest}", "digest": verification.digest,
               "predicateType": type_uri,
               "attestations": [{"format": a.format, "keyHint": a.key_hint, "statement": a.statement}
                                for a in verification.attestations]})
        return 0
    for attested in verification.attestations:
        sys.stdout.write(f"Verified {ref.name}@{verification.digest}: {attested.format} attestation "
                         f"{attested.predicate_type} by key {attested.key_hint}\n")
    return 0


def _signature_format(args: Arguments) -> str:
    """bundle or legacy: cosign's --new-bundle-format, else --signature-format, else sign's older --format."""
    if args.new_bundle_format is not None:
        return "bundle" if args.new_bundle_format else "legacy"
    if getattr(args, "format", "") in ("bundle", "legacy") and args.signature_format is None:
        return str(args.format)
    return str(args.signature_format or "bundle")


def _cmd_login(args: Arguments) -> int:
    from wasm_shim.oci.auth import Credential, DockerCredentials

    registry = args.registry.strip()
    if "/" in registry or not registry:
        raise CommandError(f"login takes a registry HOST[:PORT], got {args.registry!r}")
    username, password, token = args.username or "", args.password, args.identity_token
    if password is not None:
        sys.stderr.write("WARNING! Using --password via the CLI is insecure. Use --password-stdin.\n")
    if token is not None:
        sys.stderr.write("WARNING! Using --identity-token via the CLI is insecure. Use --identity-token-stdin.\n")
    if args.password_stdin or args.identity_token_stdin:
        if (args.password_stdin and password is not None) or (args.identity_token_stdin and token is not None):
            raise CommandError("give the secret either on the command line or on stdin, not both")
        secret = sys.stdin.readline().rstrip("\r\n")
        if args.password_stdin:
            password = secret
        else:
            token = secret
    if token is None and password is None:
        if not sys.stdin.isatty():
            raise CommandError("no credentials: give -u USER with --password-stdin (or --identity-token-stdin); "
                               "there is no terminal to prompt on")
        import getpass

        username = username or input("Username: ")
        password = getpass.getpass("Password: ")
    if token is None and not username:
        raise CommandError("a password needs a username (-u USER)")
    credential = Credential(username if token is None else "", password or "", token or "")
    config = DockerCredentials.from_environment(path=args.registry_config or "")
    server = config.server_key(registry)
    entry = {"identitytoken": token} if token is not None else {"username": username, "password": password or ""}
    with _client(args, registry, DockerCredentials({"auths": {server: entry}})) as client:
        client.check_login(registry)
    where = config.store(registry, credential)
    sys.stderr.write(f"Credentials for {registry} saved to {where}\n")
    sys.stdout.write("Login Succeeded\n")
    return 0


def _cmd_logout(args: Arguments) -> int:
    from wasm_shim.oci.auth import DockerCredentials

    config = DockerCredentials.from_environment(path=args.registry_config or "")
    if not config.erase(args.registry.strip()):
        sys.stderr.write(f"Not logged in to {args.registry} (nothing in {config.source})\n")
        return 0
    sys.stdout.write(f"Removed login credentials for {args.registry}\n")
    return 0


def _registry_options(command: Command) -> None:
    command.option("--ca-file", "--ca-bundle", dest="ca_bundle", metavar="FILE", help="PEM CA certificates to verify "
                   "the registry's TLS certificate with (default: the system's; --ca-bundle is the older name)")
    command.option("--insecure-registry", kind=APPEND, metavar="HOST[:PORT]", help="allow plain HTTP to this "
                   "registry when it does not speak TLS (loopback registries are allowed already); repeatable")
    command.option("--plain-http", kind=FLAG, help="allow plain HTTP to the registry this command names (oras's "
                   "flag; the same as --insecure-registry with that registry)")
    command.option("--registry-config", metavar="PATH", help="the docker config file holding credentials (default: "
                   "$DOCKER_CONFIG/config.json, else ~/.docker/config.json)")
    command.option("--timeout", convert=float_value, default=60.0, metavar="SECONDS", help="read timeout per request "
                   "(default 60); each request and its answer end within 3 times it plus 1 s per 64 KiB received; "
                   "failed requests are retried with backoff")


def _signature_format_options(command: Command) -> None:
    command.option("--signature-format", choices=("bundle", "legacy"), help="bundle: a sigstore bundle v0.3 "
                   "referrer (cosign 3's default); legacy: cosign's sha256-<hex> tag format")
    command.option("--new-bundle-format", convert=bool_value, metavar="BOOL", help="cosign's name: false is "
                   "--signature-format legacy")


def _format_option(command: Command) -> None:
    command.option("--format", choices=("text", "json"), default="text", help="output: text (default), or one JSON "
                   "document (oras's shapes for push, pull and tags) for scripts")


def _push() -> Command:
    push = Command("wasm-shim push", "push a .wasm module or component as a wasm OCI artifact",
                   "Push FILE as a CNCF wasm OCI artifact (config application/vnd.wasm.config.v0+json, one "
                   "application/wasm layer). Credentials: $DOCKER_CONFIG/config.json or ~/.docker/config.json. "
                   "Prints REGISTRY/REPOSITORY@DIGEST.")
    push.positional("FILE", "file")
    push.positional("REGISTRY/REPOSITORY:TAG", "reference")
    push.option("--annotation", kind=APPEND, metavar="KEY=VALUE", help="a manifest annotation; repeatable")
    _format_option(push)
    _registry_options(push)
    return push


def _pull() -> Command:
    pull = Command("wasm-shim pull", "pull a wasm OCI artifact's module or component into a file",
                   "Pull the wasm layer of an artifact (current and older layouts) into a file; every byte is "
                   "checked against its digest, and the file appears only when complete.")
    pull.positional("REFERENCE", "reference")
    pull.option("-o", "--output", required=True, metavar="FILE")
    _format_option(pull)
    _registry_options(pull)
    return pull


def _tags() -> Command:
    tags = Command("wasm-shim tags", "list a repository's tags")
    tags.positional("REGISTRY/REPOSITORY", "repository")
    _format_option(tags)
    _registry_options(tags)
    return tags


def _generate() -> Command:
    gen = Command("wasm-shim generate-key-pair", "write cosign.key and cosign.pub (cosign's formats)",
                  f"Generate an ECDSA P-256 key pair in cosign's formats; the private key is encrypted with the "
                  f"password from ${PASSWORD_ENV} or a prompt.")
    gen.option("--output-key-prefix", default="cosign", metavar="PREFIX", help="file name prefix (default cosign: "
               "cosign.key, cosign.pub)")
    gen.option("--force", kind=FLAG, help="overwrite existing key files")
    return gen


def _sign() -> Command:
    sign = Command("wasm-shim sign", "sign an image or artifact with a cosign key (offline)",
                   "Sign the manifest a reference names, like `cosign sign --key KEY --tlog-upload=false`: key-based, "
                   f"offline (no transparency log, no certificate authority). Password from ${PASSWORD_ENV} or a "
                   "prompt.")
    sign.option("--key", required=True, metavar="cosign.key")
    _signature_format_options(sign)
    sign.option("--format", choices=("text", "json", "bundle", "legacy"), default="text", help="output: text "
                "(default) or json; bundle and legacy are the older spelling of --signature-format")
    sign.positional("REFERENCE", "reference")
    _registry_options(sign)
    return sign


def _verify() -> Command:
    verify = Command("wasm-shim verify", "verify an image's cosign signatures with public keys (offline)",
                     "Verify signatures in both cosign formats (bundle referrers, then the .sig tag) against public "
                     "keys, like `cosign verify --key KEY --insecure-ignore-tlog`. Exit 1 with the reason for each "
                     "candidate when none verifies.")
    verify.option("--key", required=True, kind=APPEND, metavar="cosign.pub", help="repeatable: any one key suffices")
    verify.positional("REFERENCE", "reference")
    _format_option(verify)
    _registry_options(verify)
    return verify


def _attest() -> Command:
    attest = Command("wasm-shim attest", "attest an image with an in-toto predicate and a cosign key (offline)",
                     "Sign an in-toto statement about the manifest a reference names, like `cosign attest --key KEY "
                     "--type TYPE --predicate FILE --tlog-upload=false`: a DSSE envelope in a sigstore bundle "
                     "referrer (default), or a layer of the sha256-<hex>.att manifest (--new-bundle-format=false). "
                     f"Password from ${PASSWORD_ENV} or a prompt.")
    attest.option("--key", required=True, metavar="cosign.key")
    attest.option("--type", default="custom", metavar="TYPE", help="the predicate type: a URI or one of cosign's "
                  "names (slsaprovenance1, slsaprovenance, spdxjson, cyclonedx, link, vuln, openvex, custom; default "
                  "custom)")
    attest.option("--predicate", required=True, metavar="FILE", help="the predicate (JSON; - reads stdin)")
    _signature_format_options(attest)
    attest.positional("REFERENCE", "reference")
    _format_option(attest)
    _registry_options(attest)
    return attest


def _verify_attestation() -> Command:
    vatt = Command("wasm-shim verify-attestation", "verify an image's attestations of one predicate type with "
                   "public keys (offline)",
                   "Verify attestations of --type in both cosign formats (bundle referrers, then the .att tag) "
                   "against public keys, like `cosign verify-attestation --key KEY --type TYPE "
                   "--insecure-ignore-tlog`; --condition PATH=VALUE requires a predicate field's value. Exit 1 with "
                   "the reason for each candidate when none verifies.")
    vatt.option("--key", required=True, kind=APPEND, metavar="cosign.pub", help="repeatable: any one key suffices")
    vatt.option("--type", default="custom", metavar="TYPE", help="the predicate type (as for attest)")
    vatt.option("--condition", kind=APPEND, metavar="PATH=VALUE", help="the predicate's field at PATH (dots between "
                "keys, e.g. runDetails.builder.id) must equal VALUE; repeatable")
    vatt.positional("REFERENCE", "reference")
    _format_option(vatt)
    _registry_options(vatt)
    return vatt


def _login() -> Command:
    login = Command("wasm-shim login", "log in to a registry: save credentials where docker, oras and cosign read "
                    "them",
                    "Check the credentials against the registry, then save them as `oras login` does: through the "
                    "credential helper the docker config names for the registry (credHelpers, credsStore; "
                    "docker-credential-NAME on PATH), else in its auths. A password on the command line is visible "
                    "to other users (ps): prefer --password-stdin.")
    login.positional("REGISTRY", "registry")
    login.option("-u", "--username", help="the user name")
    login.option("-p", "--password", help="the password (insecure: use --password-stdin)")
    login.option("--password-stdin", kind=FLAG, help="read the password from stdin")
    login.option("--identity-token", help="an identity (refresh) token instead of a password (insecure: use "
                 "--identity-token-stdin)")
    login.option("--identity-token-stdin", kind=FLAG, help="read an identity token from stdin")
    _registry_options(login)
    return login


def _logout() -> Command:
    logout = Command("wasm-shim logout", "remove a registry's saved credentials",
                     "Remove the credentials `login` (or docker, oras) saved for REGISTRY, from its credential helper "
                     "or the docker config's auths.")
    logout.positional("REGISTRY", "registry")
    logout.option("--registry-config", metavar="PATH", help="the docker config file (default: "
                  "$DOCKER_CONFIG/config.json, else ~/.docker/config.json)")
    return logout


# name -> (the command's declaration, what runs it); the order is `wasm-shim --help`'s.
COMMANDS: dict[str, tuple[Callable[[], Command], Callable[[Arguments], int]]] = {
    "push": (_push, _cmd_push),
    "pull": (_pull, _cmd_pull),
    "tags": (_tags, _cmd_tags),
    "generate-key-pair": (_generate, _cmd_generate),
    "sign": (_sign, _cmd_sign),
    "verify": (_verify, _cmd_verify),
    "attest": (_attest, _cmd_attest),
    "verify-attestation": (_verify_attestation, _cmd_verify_attestation),
    "login": (_login, _cmd_login),
    "logout": (_logout, _cmd_logout),
}


def summaries() -> list[tuple[str, str]]:
    """(name, one line of help) of each command, for `wasm-shim --help`."""
    return [(name, declare().help) for name, (declare, _) in COMMANDS.items()]


def run(name: str, argv: Sequence[str]) -> int:
    """`wasm-shim NAME ARGV...`: parse with the command's own parser, run it; usage errors exit 2 (SystemExit)."""
    declare, func = COMMANDS[name]
    command = declare()
    try:
        args = command.parse(argv)
    except UsageError as exc:
        raise command.fail(str(exc)) from None
    try:
        return func(args)
    except Exception as exc:
        # Every error the registry side raises on purpose is defined in wasm_shim.oci and says what failed;
        # matching by module keeps `pull` from importing the signature code just to name its exceptions.
        if isinstance(exc, CommandError) or type(exc).__module__.startswith("wasm_shim.oci."):
            sys.stderr.write(f"{command.prog}: {exc}\n")
            return exc.status if isinstance(exc, CommandError) else 1
        raise
