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

import argparse
import os
import sys
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


def _client(args: argparse.Namespace, registry: str = "", credentials: Any = None):  # type: ignore[no-untyped-def]
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


def _cmd_push(args: argparse.Namespace) -> int:
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


def _cmd_pull(args: argparse.Namespace) -> int:
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


def _cmd_tags(args: argparse.Namespace) -> int:
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


def _cmd_generate(args: argparse.Namespace) -> int:
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


def _cmd_sign(args: argparse.Namespace) -> int:
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


def _cmd_verify(args: argparse.Namespace) -> int:
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


def _cmd_attest(args: argparse.Namespace) -> int:
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


def _cmd_verify_attestation(args: argparse.Namespace) -> int:
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


def _signature_format(args: argparse.Namespace) -> str:
    """bundle or legacy: cosign's --new-bundle-format, else --signature-format, else sign's older --format."""
    if args.new_bundle_format is not None:
        return "bundle" if args.new_bundle_format else "legacy"
    if getattr(args, "format", "") in ("bundle", "legacy") and args.signature_format is None:
        return str(args.format)
    return str(args.signature_format or "bundle")


def _bool(text: str) -> bool:
    if text.lower() in ("true", "1", "yes"):
        return True
    if text.lower() in ("false", "0", "no"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def _cmd_login(args: argparse.Namespace) -> int:
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


def _cmd_logout(args: argparse.Namespace) -> int:
    from wasm_shim.oci.auth import DockerCredentials

    config = DockerCredentials.from_environment(path=args.registry_config or "")
    if not config.erase(args.registry.strip()):
        sys.stderr.write(f"Not logged in to {args.registry} (nothing in {config.source})\n")
        return 0
    sys.stdout.write(f"Removed login credentials for {args.registry}\n")
    return 0


def _registry_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--ca-file", "--ca-bundle", dest="ca_bundle", metavar="FILE", help="PEM CA certificates to "
                        "verify the registry's TLS certificate with (default: the system's; --ca-bundle is the "
                        "older name)")
    parser.add_argument("--insecure-registry", action="append", metavar="HOST[:PORT]",
                        help="allow plain HTTP to this registry when it does not speak TLS (loopback registries "
                        "are allowed already); repeatable")
    parser.add_argument("--plain-http", action="store_true", help="allow plain HTTP to the registry this command "
                        "names (oras's flag; the same as --insecure-registry with that registry)")
    parser.add_argument("--registry-config", metavar="PATH", help="the docker config file holding credentials "
                        "(default: $DOCKER_CONFIG/config.json, else ~/.docker/config.json)")
    parser.add_argument("--timeout", type=float, default=60.0, metavar="SECONDS",
                        help="read timeout per request (default 60); each request and its answer end within 3 times "
                        "it plus 1 s per 64 KiB received; failed requests are retried with backoff")


def _signature_format_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--signature-format", choices=("bundle", "legacy"), default=None,
                        help="bundle: a sigstore bundle v0.3 referrer (cosign 3's default); legacy: cosign's "
                        "sha256-<hex> tag format")
    parser.add_argument("--new-bundle-format", type=_bool, default=None, metavar="BOOL",
                        help="cosign's name: false is --signature-format legacy")


def registry_parser() -> argparse.ArgumentParser:
    """`wasm-shim` with the registry commands only (what main() uses for them: nothing else is imported)."""
    from .main import VersionAction

    parser = argparse.ArgumentParser(prog="wasm-shim")
    parser.add_argument("--version", action=VersionAction)
    add_commands(parser.add_subparsers(dest="command", metavar="COMMAND"))
    return parser


def add_commands(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    push = sub.add_parser("push", help="push a .wasm module or component as a wasm OCI artifact",
                          description="Push FILE as a CNCF wasm OCI artifact (config application/vnd.wasm.config."
                          "v0+json, one application/wasm layer). Credentials: $DOCKER_CONFIG/config.json or "
                          "~/.docker/config.json. Prints REGISTRY/REPOSITORY@DIGEST.")
    push.add_argument("file", metavar="FILE")
    push.add_argument("reference", metavar="REGISTRY/REPOSITORY:TAG")
    push.add_argument("--annotation", action="append", metavar="KEY=VALUE", help="a manifest annotation; "
                      "repeatable")
    pull = sub.add_parser("pull", help="pull a wasm OCI artifact's module or component into a file",
                          description="Pull the wasm layer of an artifact (current and older layouts) into a file; "
                          "every byte is checked against its digest, and the file appears only when complete.")
    pull.add_argument("reference", metavar="REFERENCE")
    pull.add_argument("-o", "--output", required=True, metavar="FILE")
    tags = sub.add_parser("tags", help="list a repository's tags")
    tags.add_argument("repository", metavar="REGISTRY/REPOSITORY")
    gen = sub.add_parser("generate-key-pair", help="write cosign.key and cosign.pub (cosign's formats)",
                         description=f"Generate an ECDSA P-256 key pair in cosign's formats; the private key is "
                         f"encrypted with the password from ${PASSWORD_ENV} or a prompt.")
    gen.add_argument("--output-key-prefix", default="cosign", metavar="PREFIX", help="file name prefix "
                     "(default cosign: cosign.key, cosign.pub)")
    gen.add_argument("--force", action="store_true", help="overwrite existing key files")
    sign = sub.add_parser("sign", help="sign an image or artifact with a cosign key (offline)",
                          description="Sign the manifest a reference names, like `cosign sign --key KEY "
                          "--tlog-upload=false`: key-based, offline (no transparency log, no certificate "
                          f"authority). Password from ${PASSWORD_ENV} or a prompt.")
    sign.add_argument("--key", required=True, metavar="cosign.key")
    _signature_format_options(sign)
    sign.add_argument("--format", choices=("text", "json", "bundle", "legacy"), default="text",
                      help="output: text (default) or json; bundle and legacy are the older spelling of "
                      "--signature-format")
    sign.add_argument("reference", metavar="REFERENCE")
    verify = sub.add_parser("verify", help="verify an image's cosign signatures with public keys (offline)",
                            description="Verify signatures in both cosign formats (bundle referrers, then the "
                            ".sig tag) against public keys, like `cosign verify --key KEY --insecure-ignore-tlog`. "
                            "Exit 1 with the reason for each candidate when none verifies.")
    verify.add_argument("--key", required=True, action="append", metavar="cosign.pub", help="repeatable: any "
                        "one key suffices")
    verify.add_argument("reference", metavar="REFERENCE")
    attest = sub.add_parser("attest", help="attest an image with an in-toto predicate and a cosign key (offline)",
                            description="Sign an in-toto statement about the manifest a reference names, like "
                            "`cosign attest --key KEY --type TYPE --predicate FILE --tlog-upload=false`: a DSSE "
                            "envelope in a sigstore bundle referrer (default), or a layer of the sha256-<hex>.att "
                            f"manifest (--new-bundle-format=false). Password from ${PASSWORD_ENV} or a prompt.")
    attest.add_argument("--key", required=True, metavar="cosign.key")
    attest.add_argument("--type", default="custom", metavar="TYPE", help="the predicate type: a URI or one of "
                        "cosign's names (slsaprovenance1, slsaprovenance, spdxjson, cyclonedx, link, vuln, openvex, "
                        "custom; default custom)")
    attest.add_argument("--predicate", required=True, metavar="FILE", help="the predicate (JSON; - reads stdin)")
    _signature_format_options(attest)
    attest.add_argument("reference", metavar="REFERENCE")
    vatt = sub.add_parser("verify-attestation", help="verify an image's attestations of one predicate type with "
                          "public keys (offline)",
                          description="Verify attestations of --type in both cosign formats (bundle referrers, then "
                          "the .att tag) against public keys, like `cosign verify-attestation --key KEY --type TYPE "
                          "--insecure-ignore-tlog`; --condition PATH=VALUE requires a predicate field's value. Exit "
                          "1 with the reason for each candidate when none verifies.")
    vatt.add_argument("--key", required=True, action="append", metavar="cosign.pub", help="repeatable: any one key "
                      "suffices")
    vatt.add_argument("--type", default="custom", metavar="TYPE", help="the predicate type (as for attest)")
    vatt.add_argument("--condition", action="append", metavar="PATH=VALUE", help="the predicate's field at PATH "
                      "(dots between keys, e.g. runDetails.builder.id) must equal VALUE; repeatable")
    vatt.add_argument("reference", metavar="REFERENCE")
    login = sub.add_parser("login", help="log in to a registry: save credentials where docker, oras and cosign "
                           "read them",
                           description="Check the credentials against the registry, then save them as `oras login` "
                           "does: through the credential helper the docker config names for the registry "
                           "(credHelpers, credsStore; docker-credential-NAME on PATH), else in its auths. A password "
                           "on the command line is visible to other users (ps): prefer --password-stdin.")
    login.add_argument("registry", metavar="REGISTRY")
    login.add_argument("-u", "--username", help="the user name")
    login.add_argument("-p", "--password", help="the password (insecure: use --password-stdin)")
    login.add_argument("--password-stdin", action="store_true", help="read the password from stdin")
    login.add_argument("--identity-token", help="an identity (refresh) token instead of a password (insecure: use "
                       "--identity-token-stdin)")
    login.add_argument("--identity-token-stdin", action="store_true", help="read an identity token from stdin")
    logout = sub.add_parser("logout", help="remove a registry's saved credentials",
                            description="Remove the credentials `login` (or docker, oras) saved for REGISTRY, from its "
                            "credential helper or the docker config's auths.")
    logout.add_argument("registry", metavar="REGISTRY")
    logout.add_argument("--registry-config", metavar="PATH", help="the docker config file (default: "
                        "$DOCKER_CONFIG/config.json, else ~/.docker/config.json)")
    logout.set_defaults(func=_guarded(_cmd_logout, logout.prog))
    for parser in (push, pull, tags, verify, vatt, attest):
        parser.add_argument("--format", choices=("text", "json"), default="text",
                            help="output: text (default), or one JSON document (oras's shapes for push, pull and "
                            "tags) for scripts")
    for parser, func in ((push, _cmd_push), (pull, _cmd_pull), (tags, _cmd_tags), (gen, _cmd_generate),
                         (sign, _cmd_sign), (verify, _cmd_verify), (attest, _cmd_attest),
                         (vatt, _cmd_verify_attestation), (login, _cmd_login)):
        if parser is not gen:
            _registry_options(parser)
        parser.set_defaults(func=_guarded(func, parser.prog))


def _guarded(func, prog):  # type: ignore[no-untyped-def]
    def run(args: argparse.Namespace) -> int:
        try:
            result: int = func(args)
            return result
        except Exception as exc:
            # Every error the registry side raises on purpose is defined in wasm_shim.oci and says what failed;
            # matching by module keeps `pull` from importing the signature code just to name its exceptions.
            if isinstance(exc, CommandError) or type(exc).__module__.startswith("wasm_shim.oci."):
                sys.stderr.write(f"{prog}: {exc}\n")
                return exc.status if isinstance(exc, CommandError) else 1
            raise

    return run
