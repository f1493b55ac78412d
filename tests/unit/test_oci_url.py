"""URLs as the registry client reads them (oci/url.py): the strict rules, and agreement with urllib.parse on every
URL both accept (hypothesis), so the one reader the client uses never disagrees with the standard library about a
URL it acts on.
"""

from __future__ import annotations

from urllib.parse import urlsplit

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from wasm_shim.oci.url import URLError, origin, split_authority, split_url

SETTINGS = settings(max_examples=300, derandomize=True, database=None, deadline=None,
                    suppress_health_check=list(HealthCheck))


def test_the_parts_of_a_registry_url() -> None:
    url = split_url("HTTPS://Registry.Example:5000/v2/team/app/blobs/sha256:ab?digest=x#frag")
    assert (url.scheme, url.host, url.port, url.authority, url.target) == \
        ("https", "registry.example", 5000, "registry.example:5000", "/v2/team/app/blobs/sha256:ab?digest=x")
    assert url.hostport == "registry.example:5000" and url.origin == ("https", "registry.example", 5000)
    assert split_url("http://[::1]:8080").target == "/" and split_url("http://[::1]:8080").hostport == "[::1]:8080"
    assert split_url("https://r.example:443/v2/").hostport == "r.example"  # the default port is not written
    assert split_url("http://r.example:/x").port == 80  # an empty port is the default (RFC 3986 section 3.2.3)
    assert split_url("http://r.example?q").target == "/?q"


@pytest.mark.parametrize("url, message", [
    ("ftp://r.example/", "not an http:// or https:// URL"),
    ("//r.example/", "not an http:// or https:// URL"),
    ("http://user:secret@r.example/", "user:password"),
    ("http://r.example@evil.example/", "user:password"),
    ("http://r.example\\@evil.example/", "backslash"),
    ("http://r.exa\tmple/", "control character"),
    ("http://r.example/a b", "space"),
    ("http://r.example:99999/", "port"),
    ("http://r.example:0/", "port"),
    ("http://r.example:8o/", "port"),
    ("http://a:1:2/", "port"),
    ("http://[::1/", "IPv6"),
    ("http://[evil.example]/", "not an IPv6 address"),
    ("http://[::1]x/", "IPv6"),
    ("http:///v2/", "not host"),
])
def test_urls_the_client_refuses(url: str, message: str) -> None:
    with pytest.raises(URLError, match=message):
        split_url(url)


def test_a_refused_url_has_an_origin_equal_to_no_other() -> None:
    assert origin("http://user@r.example/") != origin("http://user@r.example/x")
    assert origin("http://user@r.example/") != origin("http://r.example/")
    assert origin("https://R.example:443/a") == origin("https://r.example/b")


def test_userinfo_only_when_asked_for() -> None:
    proxy = split_url("http://al%40ce:p%3Ass@proxy.example:3128", userinfo=True)
    assert proxy.userinfo == "al%40ce:p%3Ass" and proxy.authority == "proxy.example:3128" and proxy.port == 3128


def test_authorities() -> None:
    assert split_authority("Registry:5000") == ("registry", 5000)
    assert split_authority("[FE80::1]") == ("fe80::1", None)
    with pytest.raises(URLError):
        split_authority("a/b")


hosts = st.one_of(
    st.from_regex(r"[a-z0-9]([a-z0-9-]{0,10}[a-z0-9])?(\.[a-z0-9]([a-z0-9-]{0,10}[a-z0-9])?){0,3}", fullmatch=True),
    st.ip_addresses(v=4).map(str),
    st.ip_addresses(v=6).map(lambda a: f"[{a}]"),
)
paths = st.from_regex(r"(/[A-Za-z0-9._~%!$&'()*+,;=:@-]{0,12}){0,4}", fullmatch=True)
queries = st.from_regex(r"(\?[A-Za-z0-9._~%!$&'()*+,;=:@/?-]{0,20})?", fullmatch=True)


@SETTINGS
@given(st.sampled_from(["http", "https", "HTTP", "Https"]), hosts, st.none() | st.integers(1, 65535), paths,
       queries, st.booleans())
def test_split_agrees_with_urllib(scheme: str, host: str, port: int | None, path: str, query: str,
                                  upper: bool) -> None:
    authority = (host.upper() if upper else host) + (f":{port}" if port is not None else "")
    url = f"{scheme}://{authority}{path}{query}"
    ours = split_url(url)
    theirs = urlsplit(url)
    assert ours.scheme == theirs.scheme
    assert ours.host == theirs.hostname
    assert ours.port == (theirs.port or {"http": 80, "https": 443}[theirs.scheme])
    assert ours.authority == theirs.netloc.lower()
    assert ours.target == (theirs.path or "/") + (f"?{theirs.query}" if query else "")  # an empty query is kept
