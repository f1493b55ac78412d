"""The development lab: the real components tests, benchmarks, the demo and the e2e suite start for themselves.

Nothing here ships, and product code (shim/, oci/) never imports it. Everything runs in temp dirs, on loopback or in
network namespaces it creates itself, and is removed afterwards.

- ``containerd``: a private containerd (Debian's 1.6, or the 2.x build in ``.tools/bin``) in a temp dir.
- ``registries``: registries on loopback (Debian's docker-registry, with TLS and basic auth; the referrers-registry
  built from ``tools/``), a token server, a minimal loopback artifact pusher.
- ``cri_tools``: crictl against a private containerd with CNI; ``containerd_api``: containerd's gRPC API (the
  parts the tests need, from ``protos/``).
- ``netns``: network namespaces; ``http_client``: a small HTTP client for served guests; ``shimtools``: running
  our shim binary's subcommands by hand; ``soak``: process and thread measurements, the reliability table.
- ``guests``: the WebAssembly guests, built from source (``guests/build.sh``) into a cache.
- ``cluster``: a two-node Kubernetes built here, in private namespaces (``python -m lab.cluster``).
- ``fixtures``: a pytest plugin offering these as fixtures (``pytest_plugins = ["lab.fixtures"]``).
"""
