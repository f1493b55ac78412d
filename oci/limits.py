"""The bounds on everything read from a registry: one place for the numbers, each with why it is enough.

A registry may be hostile (it may be one a pod names): it chooses every size, every header and how fast bytes come.
So every read has a cap, and an error over a cap names the cap (oci/transport.py, oci/registry.py); every exchange
has a total deadline (oci/deadline.py). Blobs are never held in memory: they stream into a file, checked against
their descriptor's size and digest as they come (oci/digest.py).
"""

from __future__ import annotations

from .manifest import MAX_MANIFEST_SIZE

MANIFEST_LIMIT = MAX_MANIFEST_SIZE  # 4 MiB, as containerd and distribution limit manifests
ERROR_BODY_LIMIT = 4 << 10  # an error body is kept to this size for the message; the rest is never read
DISCARD_LIMIT = 64 << 10  # a body nobody needs is read up to this to keep the connection; beyond it, closed
TOKEN_RESPONSE_LIMIT = 1 << 20  # a token response is a JWT of a few KiB in JSON
LISTING_LIMIT = 4 << 20  # a tag or referrer listing, all its pages together (about 100,000 tags)
LISTING_PAGES = 100  # pagination links followed at most
URL_LIMIT = 8 << 10  # a pagination link or a redirect's Location
REDIRECT_LIMIT = 5  # redirects followed per request (blob storage needs one)
MIN_RATE = 64 << 10  # bytes/s: an exchange may take its total timeout plus one second per MIN_RATE bytes received
TOTAL_TIMEOUT_READS = 3  # the default total timeout of an exchange is this many read timeouts
