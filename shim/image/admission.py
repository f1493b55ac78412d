"""Admission at Create: whether the image a container runs may run, by the node's signature policy (signatures
and signed attestations, oci/policy.py).

Owns `Admission`: the policy in force for this Create (`policy()`, a fixed one or the file's current content) and
`decide(policy, origin, task_id)`, the verdict on exactly the `ImageOrigin` the entrypoint source determined (the
manifest whose layer is placed; oci/policy.py `decide`). It only decides: finding the image and placing its module
are the entrypoint source's (source.py), so the digest checked is, by construction, the digest that runs.

Invariants:
- Refusals raise AdmissionError (an EngineError, so Create fails with FAILED_PRECONDITION and the message reaches
  `ctr` and `kubectl describe`) naming the image, its digest (and manifest and layer when they differ), the rule
  and the reason; warn mode logs the same message at WARNING and lets the task run.
- Verification hits the registry only on a cache miss (oci/policy.py VerificationCache, memory + disk); under
  enforce an unreachable registry with no cached verification refuses.
- A policy that cannot be used refuses everything (`Admission.refusing`; a policy file that no longer parses):
  never "allow everything". A policy file is the file's current content at each Create.
- The registry client and cryptography are imported only when a policy asks for a verification.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from ..daemon.tracing import NO_TRACING, Tracer
from ..engines.base import EngineError
from .origin import ImageOrigin
from .registry import registry_client

log = logging.getLogger(__name__)


class AdmissionError(EngineError):
    """The task may not run by the policy, or the policy cannot be used; the message says which image and why."""


class Admission:
    """The node's signature policy at Create: `policy_file` (an oci.policy.PolicyFile), whose current content
    applies (re-read when it changes); None: no checks."""

    def __init__(self, policy_file: Any = None, *, verified_dir: str | None = None, access: Any = None,
                 tracer: Tracer = NO_TRACING) -> None:
        self._policy_file = policy_file
        self._tracer = tracer  # the policy check's span (shim/daemon/tracing.py)
        self.access = access  # how the node reaches registries (registry.py NodeRegistryAccess), or None
        self._verified_dir = verified_dir
        self._cache: Any = None
        self._refusal = ""

    @classmethod
    def refusing(cls, reason: str) -> Admission:
        """An admission that refuses every container with `reason` (a policy that does not parse)."""
        admission = cls()
        admission._refusal = reason
        return admission

    def policy(self) -> Any:
        """The policy this Create is checked against (None: no checks); AdmissionError when none can be used."""
        if self._refusal:
            raise AdmissionError(self._refusal)
        if self._policy_file is None:
            return None
        from wasm_shim.oci.policy import PolicyError

        try:
            return self._policy_file.current()
        except PolicyError as exc:
            log.error("the signature policy cannot be used, refusing: %s", exc)
            raise AdmissionError(f"the shim's signature policy cannot be used, so nothing runs: {exc}") from None

    @staticmethod
    def checks(policy: Any) -> bool:
        """Whether `policy` needs to know a container's image at all (an allow-all policy needs nothing)."""
        return policy is not None and not policy.checks_nothing

    def _verification_cache(self, policy: Any) -> Any:
        if self._cache is None:
            from wasm_shim.oci.policy import VerificationCache

            self._cache = VerificationCache(self._verified_dir, 0.0)
        self._cache.ttl = policy.cache_ttl  # the policy's, as re-read
        return self._cache

    def decide(self, policy: Any, origin: ImageOrigin | None, task_id: str,
               verify_client: Callable[[], Any] | None = None) -> None:
        """Allow (returns) or refuse (AdmissionError) the container whose image is `origin` (None: no image).

        Blocking on a verification cache miss (a registry lookup): call it off the event loop.
        """
        if not self.checks(policy):
            return
        attributes = {"wasm_shim.policy": str(policy.source)}
        if origin is not None:
            attributes.update({"oci.image": origin.name, "oci.digest": origin.digest})
        with self._tracer.span("wasm_shim.policy.check", attributes) as span:
            verdict = self._decide(policy, origin, task_id, verify_client)
            span.set("wasm_shim.policy.verdict", verdict)

    def _decide(self, policy: Any, origin: ImageOrigin | None, task_id: str,
                verify_client: Callable[[], Any] | None) -> str:
        """`decide` under its span: the verdict ("allow", "warn") or AdmissionError."""
        if origin is None:
            if policy.default == "allow":
                return "allow"
            raise AdmissionError(f"container {task_id} has no image, and the signature policy {policy.source} "
                                 "refuses images no rule matches (default deny)")
        from wasm_shim.oci.attest import AttestationFailed, verify_attestations
        from wasm_shim.oci.cosign import VerificationFailed, verify_image
        from wasm_shim.oci.digest import DigestMismatch
        from wasm_shim.oci.manifest import ManifestError
        from wasm_shim.oci.policy import decide
        from wasm_shim.oci.reference import ReferenceError, parse_reference
        from wasm_shim.oci.registry import RegistryError

        try:
            ref = parse_reference(origin.name, default_tag=False)
        except ReferenceError as exc:
            raise AdmissionError(f"the signature policy cannot check {origin}: {exc}") from None
        signed = ref.with_digest(origin.digest)

        def verify(rule: Any) -> None:
            with (verify_client or (lambda: registry_client(policy.registry, self.access)))() as client:
                try:
                    if rule.keys:
                        verify_image(client, signed, rule.keys)
                    for required in rule.attestations:
                        verify_attestations(client, signed, required.keys, required.predicate_type,
                                            required.conditions)
                except RegistryError as exc:
                    what = "signatures" if rule.keys else "attestations"
                    raise RegistryError(f"cannot check {what}: {exc}") from None

        decision = decide(policy, ref.name, origin.digest, verify, self._verification_cache(policy),
                          failures=(VerificationFailed, AttestationFailed, RegistryError, DigestMismatch,
                                    ManifestError))
        message = decision.message()
        if origin.manifest != origin.digest or origin.layer is not None:
            message += f" [{origin}]"  # what runs: the manifest chosen and the layer placed
        if not decision.allowed:
            log.error("%s", message)
            raise AdmissionError(message)
        if decision.warning:
            log.warning("%s", message)
            return "warn"
        log.info("%s", message)
        return "allow"
