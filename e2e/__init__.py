"""End-to-end tests and tooling on a real Kubernetes cluster built on this machine (e2e/cluster/)."""
