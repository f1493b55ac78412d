"""Test-suite wiring: the real-component fixtures (private containerd, guests built from source)."""

pytest_plugins = ["lab.fixtures", "lab.guests.fixtures"]
