"""Admission at Create: the signature policy check, and artifacts the shim pulls itself.

Owns `Admission.admit(spec, namespace)`, called once in Create before anything is compiled or run:
- A container annotated `wasm.shim.io/artifact: REF` (the shim's own registry path, for containerd 1.6, which
  cannot pull wasm artifacts) gets REF's module or component placed at its args[0]: the manifest is resolved once,
  the policy is checked against that manifest digest, and then that manifest's layer is read from the node-local
  artifact cache (oci/cache.py), fetched into it on a miss. So the digest that was verified is the digest that runs.
- Any other container except CRI's sandbox (pause) container, when a policy is configured: its image name and
  the manifest digest containerd resolved for it (Containers.Get -> Images.Get over containerd's gRPC API; the name
  from CRI's `io.kubernetes.cri.image-name` annotation when present) are checked against the policy
  (oci/policy.py `decide`).

Invariants:
- Refusals raise AdmissionError (an EngineError, so Create fails with FAILED_PRECONDITION and the message reaches
  `ctr` and `kubectl describe`) naming the image, the digest, the rule and the reason; warn mode logs the same
  message at WARNING and lets the task run.
- Verification hits the registry only on a cache miss (oci/policy.py VerificationCache, memory + disk); under
  enforce an unreachable registry with no cached verification refuses.
- A policy that cannot be used refuses everything (`Admission.refusing`), the pause container included: never
  "allow everything". A policy read from a file (`policy_file`, oci.policy.PolicyFile) is the file's current
  content at each Create: a changed file applies from the next Create; one that no longer parses refuses every
  container but the pause container until it does again.
- Only this task is affected by any failure here; nothing is left half-placed (oci/transfer.py-style atomic writes).
- grpc, urllib3 and cryptography are imported only when a policy or the annotation asks for them.
"""

from __future__ import annotations

import logging
import os
import shutil
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from wasm_shim.oci.files import removed_on_failure

from .engines.base import EngineError, GuestSpec, resolve_entrypoint

log = logging.getLogger(__name__)

ARTIFACT_ANNOTATION = "wasm.shim.io/artifact"
CRI_IMAGE_NAME = "io.kubernetes.cri.image-name"  # containerd's CRI: the image reference the pod spec named
CRI_CONTAINER_TYPE = "io.kubernetes.cri.container-type"  # "sandbox" for the pause container
MAX_MANIFEST = 4 << 20


class AdmissionError(EngineError):
    """The task may not run (policy) or its artifact cannot be had; the message says which image and why."""


@dataclass(frozen=True)
class ImageIdentity:
    name: str  # as the user wrote it (a reference)
    digest: str  # the manifest (or index) digest containerd resolved


Resolver = Callable[[GuestSpec, str], "ImageIdentity | None"]


class Admission:
    def __init__(self, policy: Any = None, *, policy_file: Any = None, verified_dir: str | None = None,
                 artifact_dir: str = "", artifact_cache_bytes: int = 1 << 30, grpc_address: str | None = None,
                 resolver: Resolver | None = None) -> None:
        self.policy = policy  # a fixed oci.policy.Policy, or None: no signature checks (unless policy_file)
        self.policy_file = policy_file  # an oci.policy.PolicyFile: its current policy, re-read when it changes
        self._verified_dir = verified_dir
        self._artifact_dir = artifact_dir
        self._artifact_cache_bytes = artifact_cache_bytes
        self._grpc_address = grpc_address
        self._resolver = resolver or self._containerd_identity
        self._cache: Any = None
        self._artifacts: Any = None
        # One gRPC channel per (address, namespace), kept: a channel's connection setup would otherwise be paid by
        # every Create under a policy. grpc channels are safe to share between the worker threads.
        self._containerd: dict[tuple[str, str], Any] = {}
        self._lock = threading.Lock()
        self._refusal = ""

    @classmethod
    def refusing(cls, reason: str) -> Admission:
        """An admission that refuses every container with `reason` (a policy that does not parse)."""
        admission = cls(None)
        admission._refusal = reason
        return admission

    # -- plumbing ----------------------------------------------------------------------------------------------
    def _current_policy(self) -> Any:
        """The policy this Create is checked against (None: no signature checks)."""
        if self.policy_file is None:
            return self.policy
        from wasm_shim.oci.policy import PolicyError

        try:
            return self.policy_file.current()
        except PolicyError as exc:
            log.error("the signature policy cannot be used, refusing: %s", exc)
            raise AdmissionError(f"the shim's signature policy cannot be used, so nothing runs: {exc}") from None

    def _verification_cache(self, policy: Any) -> Any:
        if self._cache is None:
            from wasm_shim.oci.policy import VerificationCache

            self._cache = VerificationCache(self._verified_dir, 0.0)
        self._cache.ttl = policy.cache_ttl if policy is not None else 0.0  # the policy's, as re-read
        return self._cache

    def _registry(self, policy: Any) -> Any:
        from wasm_shim.oci.auth import DockerCredentials
        from wasm_shim.oci.registry import RegistryClient

        settings = policy.registry if policy is not None else None
        environ = dict(os.environ)
        if settings is not None and settings.docker_config:
            environ["DOCKER_CONFIG"] = settings.docker_config
        return RegistryClient(
            DockerCredentials.from_environment(environ),
            ca_bundle=settings.ca_bundle if settings else None,
            insecure=settings.insecure if settings else (),
            connect_timeout=min(settings.timeout, 10.0) if settings else 10.0,
            read_timeout=settings.timeout if settings else 30.0, attempts=2, backoff=0.2,
        )

    def _containerd_identity(self, spec: GuestSpec, namespace: str) -> ImageIdentity | None:
        from .containerd_client import ContainerdClient, ContentStoreError, NotFound

        address = self._grpc_address if self._grpc_address is not None else \
            os.environ.get("WASM_SHIM_DAEMON_GRPC_ADDRESS", "")
        if not address:
            raise AdmissionError("the signature policy needs containerd's gRPC address to find the container's "
                                 "image, and the shim was not given one")
        cri_name = spec.annotations.get(CRI_IMAGE_NAME, "")
        with self._lock:
            client = self._containerd.get((address, namespace))
            if client is None:
                client = self._containerd[(address, namespace)] = ContainerdClient(address, namespace)
        try:
            image = client.container_image(spec.task_id)
            # CRI records the image ID (the config digest) as the container's image; manifests that share a
            # config (the same bytes, other annotations) share that record. The manifest the pod named is the
            # one its image-name annotation points at, so look that name up first (as CRI stores it:
            # normalised, docker.io/library/x:latest for `x`).
            candidates = [n for n in (cri_name, _normalised(cri_name), image) if n]
            for name in dict.fromkeys(candidates):
                try:
                    target = client.image_target(name)
                    break
                except NotFound:
                    continue
            else:
                if not image:
                    return None
                raise NotFound(f"none of the image names {', '.join(candidates)} is in containerd")
        except NotFound as exc:
            raise AdmissionError(f"the signature policy cannot find the image of container {spec.task_id} in "
                                 f"containerd: {exc}") from None
        except ContentStoreError as exc:
            with self._lock:  # a fresh channel next time: containerd may have restarted
                stale = self._containerd.pop((address, namespace), None)
            if stale is not None:
                stale.close()
            raise AdmissionError(f"the signature policy cannot look up the image of container {spec.task_id}: "
                                 f"{exc}") from None
        return ImageIdentity(cri_name or image, target.digest)

    def close(self) -> None:
        with self._lock:
            clients, self._containerd = list(self._containerd.values()), {}
        for client in clients:
            client.close()

    # -- the decision ------------------------------------------------------------------------------------------
    def _check(self, policy: Any, name: str, digest: str, verify_ref: Any,
               client_factory: Callable[[], Any]) -> None:
        from wasm_shim.oci.cosign import VerificationFailed, verify_image
        from wasm_shim.oci.digest import DigestMismatch
        from wasm_shim.oci.manifest import ManifestError
        from wasm_shim.oci.policy import decide
        from wasm_shim.oci.registry import RegistryError

        def verify(rule: Any) -> None:
            with client_factory() as client:
                try:
                    verify_image(client, verify_ref, rule.keys)
                except RegistryError as exc:
                    raise RegistryError(f"cannot check signatures: {exc}") from None

        decision = decide(policy, name, digest, verify, self._verification_cache(policy),
                          failures=(VerificationFailed, RegistryError, DigestMismatch, ManifestError))
        if not decision.allowed:
            log.error("%s", decision.message())
            raise AdmissionError(decision.message())
        if decision.warning:
            log.warning("%s", decision.message())
        else:
            log.info("%s", decision.message())

    def admit(self, spec: GuestSpec, namespace: str) -> None:
        """Place an annotated artifact and/or check the policy; AdmissionError when the task may not run.
        Blocking (gRPC, HTTP, file I/O): call it off the event loop."""
        if self._refusal:
            raise AdmissionError(self._refusal)
        if spec.annotations.get(CRI_CONTAINER_TYPE) == "sandbox":
            # The pause container: its image is the node's (containerd's sandbox_image setting), not the pod
            # author's choice, and it runs no wasm. containerd copies the pod's annotations into its spec too, so
            # a pod's wasm.shim.io/artifact must not be placed over /pause either.
            return
        policy = self._current_policy()
        reference = spec.annotations.get(ARTIFACT_ANNOTATION, "")
        if reference:
            self._admit_artifact(spec, reference, policy)
            return
        if policy is None or policy.checks_nothing:
            return
        identity = self._resolver(spec, namespace)
        if identity is None:
            if policy.default == "allow":
                return
            raise AdmissionError(f"container {spec.task_id} has no image, and the signature policy "
                                 f"{policy.source} refuses images no rule matches (default deny)")
        from wasm_shim.oci.reference import ReferenceError, parse_reference

        try:
            ref = parse_reference(identity.name)
        except ReferenceError as exc:
            raise AdmissionError(f"the signature policy cannot check image {identity.name!r}: {exc}") from None
        self._check(policy, ref.name, identity.digest, ref.with_digest(identity.digest),
                    lambda: self._registry(policy))

    # -- the shim's own registry path --------------------------------------------------------------------------
    def _artifacts_cache(self) -> Any:
        if self._artifacts is None:
            from wasm_shim.oci.cache import ArtifactCache

            self._artifacts = ArtifactCache(self._artifact_dir, self._artifact_cache_bytes)
        return self._artifacts

    def _admit_artifact(self, spec: GuestSpec, reference: str, policy: Any) -> None:
        from wasm_shim.oci.artifact import ArtifactError, check_artifact_manifest, is_wasm_artifact
        from wasm_shim.oci.cache import CacheError
        from wasm_shim.oci.digest import DigestMismatch
        from wasm_shim.oci.manifest import Descriptor, ManifestError, parse_json_object
        from wasm_shim.oci.reference import ReferenceError, parse_reference
        from wasm_shim.oci.registry import RegistryError
        from wasm_shim.oci.transfer import resolve_wasm_manifest

        if not self._artifact_dir:
            raise AdmissionError(f"annotation {ARTIFACT_ANNOTATION} needs the shim option artifact_dir")
        try:
            entry = resolve_entrypoint(spec)
            ref = parse_reference(reference)
            cache = self._artifacts_cache()
            with self._registry(policy) as client:
                doc = None
                digest = ref.digest
                if digest:  # pinned: a cached manifest needs no registry at all
                    cached = cache.read_bytes(digest, MAX_MANIFEST)
                    doc = parse_json_object(cached, f"cached manifest {digest}") if cached else None
                if doc is None:
                    manifest, doc = resolve_wasm_manifest(client, ref)
                    digest = manifest.digest
                    cache.put_bytes(digest, manifest.data)
                if not is_wasm_artifact(doc):
                    raise ArtifactError(f"{reference} is not a wasm OCI artifact")
                if policy is not None and not policy.checks_nothing:
                    self._check(policy, ref.name, digest, ref.with_digest(digest), lambda: self._registry(policy))
                layer = Descriptor.parse(check_artifact_manifest(doc), f"manifest {digest} of {reference}")
                cached_path = cache.ensure(layer.digest, layer.size,
                                           lambda sink: client.fetch_blob(ref, layer, sink))
        except (ArtifactError, CacheError, DigestMismatch, ManifestError, ReferenceError, RegistryError) as exc:
            raise AdmissionError(f"annotation {ARTIFACT_ANNOTATION}={reference}: {exc}") from None
        _place_copy(cached_path, entry.host_path, entry.guest_path, reference)
        log.info("task %s: placed layer %s of %s (manifest %s) from the node's artifact cache at %s", spec.task_id,
                 layer.digest, ref.name, digest, entry.guest_path)


def _normalised(name: str) -> str:
    from wasm_shim.oci.reference import ReferenceError, parse_reference

    try:
        return str(parse_reference(name)) if name else ""
    except ReferenceError:
        return ""


def _place_copy(source: str, host_path: str, guest_path: str, reference: str) -> None:
    directory = os.path.dirname(host_path)
    temporary = os.path.join(directory, f".{os.path.basename(host_path)}.wasm-shim-{os.getpid()}.tmp")
    try:
        os.makedirs(directory, mode=0o755, exist_ok=True)
        with removed_on_failure(temporary), open(source, "rb") as src:
            fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
            with os.fdopen(fd, "wb") as dst:
                shutil.copyfileobj(src, dst, 1 << 20)
            os.rename(temporary, host_path)
    except OSError as exc:
        raise AdmissionError(f"cannot place artifact {reference} at {guest_path} in the container's rootfs: "
                             f"{exc.strerror}") from None
