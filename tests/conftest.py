"""Test-suite wiring: the real-component fixtures (private containerd, guests built from source)."""

pytest_plugins = ["tests.harness.fixtures", "tests.guests.fixtures"]
