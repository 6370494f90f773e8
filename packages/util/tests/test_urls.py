"""zmq urls: is_url, validate_url(_container), split_url, disambiguate_*."""

from __future__ import annotations

import socket
from collections.abc import Callable
from typing import Any

import pytest
import zmq

from shoal.util import (
    disambiguate_ip_address,
    disambiguate_url,
    is_url,
    outbound_ip,
    split_url,
    validate_url,
    validate_url_container,
)

SocketFactory = Callable[[int], zmq.Socket[Any]]
ANY_V4 = "0.0.0.0"  # noqa: S104 - a value under test; the bind tests use it with random ports


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("tcp://127.0.0.1:5555", True),
        ("TCP://host:1", True),
        ("ipc:///tmp/x.sock", True),
        ("inproc://hub", True),
        ("epgm://eth0;239.192.1.1:5555", True),
        ("ws://host:80/path", True),
        ("http://example.com", False),
        ("127.0.0.1:5555", False),
        ("", False),
        (b"tcp://127.0.0.1:5555", False),
        (None, False),
    ],
)
def test_is_url(url: object, expected: bool) -> None:
    """is_url checks for a known transport and never raises."""
    assert is_url(url) is expected


@pytest.mark.parametrize(
    "url",
    [
        "tcp://127.0.0.1:5555",
        "tcp://*:5555",
        "tcp://*:*",
        "tcp://0.0.0.0:0",
        "tcp://localhost:65535",
        "tcp://node-1.cluster.example.org:5555",
        "tcp://eth0:5555",
        "tcp://[::1]:5555",
        "tcp://[::]:*",
        "TCP://LOCALHOST:5555",
        "ipc:///tmp/shoal.sock",
        "inproc://hub",
        "ws://127.0.0.1:8080/shoal",
        "epgm://eth0;239.192.1.1:5555",
    ],
)
def test_validate_url_accepts(url: str) -> None:
    """Well-formed urls of every shape validate (and return True)."""
    assert validate_url(url) is True


@pytest.mark.parametrize(
    ("url", "why"),
    [
        ("127.0.0.1:5555", "expected 'transport://address'"),
        ("http://host:80", "unknown transport 'http'"),
        ("tcp://", "address after '://' is empty"),
        ("tcp://127.0.0.1", "expected 'host:port'"),
        ("tcp://127.0.0.1:port", "port 'port' is not a number in 0-65535"),
        ("tcp://127.0.0.1:65536", "port '65536'"),
        ("tcp://127.0.0.1:-1", "port '-1'"),
        ("tcp://:5555", "the host is empty"),
        ("tcp://bad host:5555", "host 'bad host'"),
        ("tcp://300.1.1.1:5555", "'300.1.1.1' is not a valid IPv4 address"),
        ("tcp://::1:5555", "must be in brackets"),
        ("tcp://[::1:5555", "no ']' closes it"),
        ("tcp://[::1]5555", "expected ':port' after the ']'"),
        ("tcp://[not-v6]:5555", "'not-v6' in brackets is not an IPv6 address"),
        ("inproc://", "address after '://' is empty"),
    ],
)
def test_validate_url_rejects_with_clear_message(url: str, why: str) -> None:
    """A bad url raises ValueError naming the url and what is wrong with it."""
    with pytest.raises(ValueError, match="invalid zmq url") as info:
        validate_url(url)
    message = str(info.value)
    assert repr(url) in message
    assert why in message


@pytest.mark.parametrize("url", [b"tcp://127.0.0.1:5555", None, 5555])
def test_validate_url_rejects_non_strings(url: Any) -> None:
    """A non-str url raises TypeError naming its type."""
    with pytest.raises(TypeError, match=f"must be a str, got {type(url).__name__}"):
        validate_url(url)


def test_validate_url_container_walks_nested_containers() -> None:
    """Nested dicts, lists, tuples and sets of good urls pass."""
    validate_url_container(
        {
            "registration": "tcp://127.0.0.1:5555",
            "engines": ["tcp://*:5556", ("ipc:///tmp/a", {"inproc://b"})],
        }
    )
    validate_url_container("tcp://127.0.0.1:1")


def test_validate_url_container_names_the_bad_url() -> None:
    """The first bad url deep inside raises ValueError naming it."""
    with pytest.raises(ValueError, match="'tcp://host'"):
        validate_url_container({"a": ["tcp://127.0.0.1:1", {"b": "tcp://host"}]})


@pytest.mark.parametrize("bad", [5, [b"tcp://127.0.0.1:1"], {"k": None}])
def test_validate_url_container_rejects_non_urls(bad: Any) -> None:
    """Items that are neither urls nor containers raise TypeError."""
    with pytest.raises(TypeError):
        validate_url_container(bad)


@pytest.mark.parametrize(
    ("url", "parts"),
    [
        ("tcp://127.0.0.1:5555", ("tcp", "127.0.0.1", "5555")),
        ("tcp://*:*", ("tcp", "*", "*")),
        ("tcp://[::1]:5555", ("tcp", "::1", "5555")),
        ("TCP://Host:1", ("TCP", "Host", "1")),
    ],
)
def test_split_url(url: str, parts: tuple[str, str, str]) -> None:
    """split_url gives (proto, host, port) as strings, IPv6 hosts without brackets."""
    assert split_url(url) == parts


@pytest.mark.parametrize("url", ["ipc:///tmp/x.sock", "inproc://hub", "127.0.0.1:5555"])
def test_split_url_rejects_other_shapes(url: str) -> None:
    """A url without proto://host:port raises ValueError naming it."""
    with pytest.raises(ValueError, match="invalid zmq url"):
        split_url(url)


# --- disambiguation ----------------------------------------------------------------


def _default_route_ip() -> str | None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect(("192.0.2.1", 9))  # picks a route, sends nothing
        except OSError:
            return None
        ip: str = s.getsockname()[0]
        return ip


@pytest.mark.parametrize(
    ("ip", "location", "expected"),
    [
        ("*", None, "127.0.0.1"),
        (ANY_V4, None, "127.0.0.1"),
        (ANY_V4, "", "127.0.0.1"),
        ("::", None, "::1"),
        ("*", "127.0.0.5", "127.0.0.1"),
        ("*", "localhost", "127.0.0.1"),
        ("*", "203.0.113.9", "203.0.113.9"),
        (ANY_V4, "2001:db8::5", "2001:db8::5"),
        ("10.1.2.3", None, "10.1.2.3"),
        ("10.1.2.3", "203.0.113.9", "10.1.2.3"),
        ("host.example", "203.0.113.9", "host.example"),
        ("*", "no-such-host.invalid", "no-such-host.invalid"),
    ],
)
def test_disambiguate_ip_address(ip: str, location: str | None, expected: str) -> None:
    """Wildcards become loopback for this machine and location for another one."""
    assert disambiguate_ip_address(ip, location) == expected


def test_disambiguate_ip_address_own_hostname_is_loopback() -> None:
    """This machine's host name as location gives loopback."""
    assert disambiguate_ip_address("*", socket.gethostname()) == "127.0.0.1"


def test_disambiguate_ip_address_own_interface_is_loopback() -> None:
    """This machine's default-route address as location gives loopback."""
    ip = _default_route_ip()
    if ip is None:
        pytest.skip("this machine has no default IPv4 route")
    assert disambiguate_ip_address(ANY_V4, ip) == "127.0.0.1"


@pytest.mark.parametrize(
    ("url", "location", "expected"),
    [
        ("tcp://*:5555", None, "tcp://127.0.0.1:5555"),
        (f"tcp://{ANY_V4}:5555", "203.0.113.9", "tcp://203.0.113.9:5555"),
        ("tcp://[::]:5555", None, "tcp://[::1]:5555"),
        ("tcp://*:5555", "2001:db8::5", "tcp://[2001:db8::5]:5555"),
        ("tcp://10.0.0.1:5555", None, "tcp://10.0.0.1:5555"),
        ("ws://*:80/path", None, "ws://127.0.0.1:80/path"),
        ("ipc:///tmp/x:y", None, "ipc:///tmp/x:y"),
        ("inproc://hub", None, "inproc://hub"),
        ("not a url", None, "not a url"),
    ],
)
def test_disambiguate_url(url: str, location: str | None, expected: str) -> None:
    """Only the host of host:port urls changes; other urls come back unchanged."""
    assert disambiguate_url(url, location) == expected


@pytest.mark.parametrize("wildcard", ["*", ANY_V4])
def test_disambiguated_url_is_connectable(
    make_socket: SocketFactory, recv: Callable[..., list[bytes]], wildcard: str
) -> None:
    """A socket bound to tcp://<wildcard>:port is reached at the disambiguated url."""
    pull = make_socket(zmq.PULL)
    port = pull.bind_to_random_port(f"tcp://{wildcard}")
    url = disambiguate_url(f"tcp://{wildcard}:{port}")
    assert url == f"tcp://127.0.0.1:{port}"
    push = make_socket(zmq.PUSH)
    push.connect(url)
    push.send_multipart([b"hello", url.encode()])
    assert recv(pull) == [b"hello", url.encode()]


def _has_ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as s:
            s.bind(("::1", 0))
    except OSError:
        return False
    return True


@pytest.mark.skipif(not _has_ipv6_loopback(), reason="no IPv6 loopback here")
def test_disambiguated_ipv6_url_is_connectable(
    make_socket: SocketFactory, recv: Callable[..., list[bytes]]
) -> None:
    """A socket bound to tcp://[::]:port is reached at tcp://[::1]:port."""
    pull = make_socket(zmq.PULL)
    pull.ipv6 = True
    port = pull.bind_to_random_port("tcp://[::]")
    url = disambiguate_url(f"tcp://[::]:{port}")
    assert url == f"tcp://[::1]:{port}"
    push = make_socket(zmq.PUSH)
    push.ipv6 = True
    push.connect(url)
    push.send(b"v6")
    assert recv(pull) == [b"v6"]


def test_outbound_ip_is_the_address_on_the_route_to_a_host() -> None:
    assert outbound_ip("127.0.0.1") == "127.0.0.1"
    assert outbound_ip("localhost") == "127.0.0.1"
    # A documentation address (RFC 5737): no packet is sent, the route is only looked up.
    try:
        found = outbound_ip("192.0.2.1")
    except OSError:
        pytest.skip("this machine has no route beyond loopback")
    assert not found.startswith("127.")
    with socket.socket() as s:
        s.bind((found, 0))  # an address of this host's own


def test_outbound_ip_names_what_it_cannot_reach() -> None:
    with pytest.raises(OSError, match=r"cannot resolve host 'no-such-host\.invalid'"):
        outbound_ip("no-such-host.invalid")
