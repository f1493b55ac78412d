"""Test guests: WebAssembly programs built from the sources in src/ (see README.md and fixtures.py)."""
