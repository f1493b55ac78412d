"""Test harness: real components (a private containerd, images) started by the tests themselves.

`containerd` starts Debian's containerd 1.6 or the 2.x build from `.tools/bin` in a temp dir and cleans up
after it; `fixtures` is a pytest plugin (load it with ``pytest_plugins = ["tests.harness.fixtures"]``) that
offers them as fixtures. Nothing here is imported by the product code.
"""
