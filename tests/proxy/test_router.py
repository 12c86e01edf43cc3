"""Which service a request goes to: host, then longest path prefix, as servers read paths."""

from __future__ import annotations

import pytest

from revproxy.http.head import routing_path
from revproxy.proxy.router import Router

SERVICES = [
    (("a.test",), ("/",), "root"),
    (("a.test",), ("/admin",), "admin"),
    (("a.test",), ("/%7Ejoe",), "joe"),  # configured escaped
    (("a.test",), ("/files//old",), "old"),  # configured with a doubled slash
    (("a.test",), ("/owa/",), "owa"),
]


@pytest.mark.parametrize(
    ("path", "service"),
    [
        (b"/", "root"),
        (b"/admin", "admin"),
        (b"/admin/x", "admin"),
        (b"/adminx", "root"),  # whole segments only
        (b"/%61dmin/x", "admin"),  # an escaped unreserved character is the character
        (b"//admin", "admin"),  # runs of slashes are one
        (b"/~joe/x", "joe"),
        (b"/%7ejoe", "joe"),
        (b"/files/old/a", "old"),
        (b"/files//old/a", "old"),
        (b"/owa/x", "owa"),
        (b"/owa", "root"),  # the prefix "/owa/" needs its slash
        (b"/%2Fadmin", "root"),  # "%2F" is not unreserved: not a separator for routing
    ],
)
def test_paths_route_as_servers_read_them(path: bytes, service: str) -> None:
    router = Router(SERVICES)
    assert router.route(b"a.test", routing_path(path)) == (service, True)


def test_unknown_host_is_told_apart_from_unknown_path() -> None:
    router = Router([(("b.test",), ("/only",), "only")])
    assert router.route(b"c.test", b"/only") == (None, False)
    assert router.route(b"b.test", b"/other") == (None, True)
