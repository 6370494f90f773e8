"""zmq urls: check them, split them, and turn bind urls into connect urls.

Theory of operation
-------------------
* A zmq url is ``transport://address``. For ``tcp`` (and ``ws``/``wss``) the address
  is ``host:port``: ``host`` is ``*``, an IPv4 address, an IPv6 address in brackets,
  a host name or an interface name; ``port`` is 0-65535 or ``*`` (any free port, for
  ``bind``). Other transports (``ipc``, ``inproc``, ...) only need a non-empty address.
* A url that was good for ``bind`` (``tcp://*:5555``, ``tcp://0.0.0.0:5555``) names
  no peer to ``connect`` to. ``disambiguate_*`` replace the wildcard with loopback
  when the peer runs on this machine, else with the peer's ``location``.
* "This machine" is judged from the host name and the addresses it resolves to, plus
  the address of the interface that holds the default route; they are looked up once
  per process.
"""

from __future__ import annotations

import functools
import ipaddress
import re
import socket
from collections.abc import Iterable, Mapping

__all__ = [
    "disambiguate_ip_address",
    "outbound_ip",
    "disambiguate_url",
    "is_url",
    "split_url",
    "validate_url",
    "validate_url_container",
]

#: Transports libzmq knows (some only in draft builds).
TRANSPORTS = frozenset(
    {"tcp", "ipc", "inproc", "pgm", "epgm", "tipc", "vmci", "ws", "wss", "udp", "norm"}
)
# Transports whose address is host:port.
_HOST_PORT = frozenset({"tcp", "ws", "wss", "udp"})
_WILDCARDS_V4 = frozenset({"*", "0.0.0.0"})  # noqa: S104 - recognised, never bound
_WILDCARD_V6 = "::"
_LABEL = r"[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?"
_DOTTED_NUMBERS = re.compile(r"[0-9.]+")
_HOSTNAME = re.compile(rf"{_LABEL}(?:\.{_LABEL})*\.?", re.IGNORECASE | re.ASCII)


def is_url(url: object) -> bool:
    """Tell whether ``url`` looks like a zmq url: ``transport://...`` with a known transport.

    Only the transport is checked; use `validate_url` for the address.

    Examples
    --------
    >>> is_url("tcp://127.0.0.1:5555"), is_url("127.0.0.1:5555"), is_url("http://x")
    (True, False, False)

    .. versionadded:: 0.1
    """
    if not isinstance(url, str) or "://" not in url:
        return False
    proto = url.split("://", 1)[0]
    return proto.lower() in TRANSPORTS


def _invalid(url: str, why: str) -> ValueError:
    return ValueError(f"invalid zmq url {url!r}: {why}")


def _host_port(url: str, addr: str) -> tuple[str, str]:
    """Split ``host:port`` (``[v6]:port`` too); return the host without brackets."""
    if addr.startswith("["):
        end = addr.find("]")
        if end < 0:
            raise _invalid(url, "'[' opens an IPv6 address but no ']' closes it")
        host, rest = addr[1:end], addr[end + 1 :]
        if not rest.startswith(":"):
            raise _invalid(url, "expected ':port' after the ']' of the IPv6 address")
        return host, rest[1:]
    host, sep, port = addr.rpartition(":")
    if not sep:
        raise _invalid(url, "expected 'host:port' after '://'")
    if ":" in host:
        raise _invalid(url, f"IPv6 address {host!r} must be in brackets: [{host}]:{port}")
    return host, port


def _check_host(url: str, host: str, *, bracketed: bool) -> None:
    if bracketed:
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise _invalid(url, f"{host!r} in brackets is not an IPv6 address") from None
        return
    if _DOTTED_NUMBERS.fullmatch(host):
        try:
            ipaddress.IPv4Address(host)
        except ValueError:
            raise _invalid(url, f"{host!r} is not a valid IPv4 address") from None
        return
    if host == "*" or _HOSTNAME.fullmatch(host):
        return
    if not host:
        raise _invalid(url, "the host is empty; use '*' to bind on every interface")
    raise _invalid(url, f"host {host!r} is not '*', an IP address, a host name or an interface")


def _check_port(url: str, port: str) -> None:
    if port == "*":
        return
    if not (port.isascii() and port.isdigit() and int(port) <= 65535):
        raise _invalid(url, f"port {port!r} is not a number in 0-65535 or '*'")


def validate_url(url: str) -> bool:
    """Check that ``url`` is a well-formed zmq url, and raise saying what is wrong if not.

    Parameters
    ----------
    url : str
        For example ``tcp://127.0.0.1:5555``, ``tcp://*:*``, ``tcp://[::1]:5555``,
        ``ipc:///tmp/shoal.sock``, ``inproc://hub``.

    Returns
    -------
    bool
        Always ``True`` (so it can sit in an ``assert`` or a validator).

    Raises
    ------
    TypeError
        When ``url`` is not a ``str``.
    ValueError
        When the transport is unknown or the address malformed; the message names the
        url and the part at fault.

    .. versionadded:: 0.1
    """
    if not isinstance(url, str):
        raise TypeError(f"a zmq url must be a str, got {type(url).__name__}: {url!r}")
    proto, sep, addr = url.partition("://")
    if not sep:
        raise _invalid(url, "expected 'transport://address', e.g. 'tcp://127.0.0.1:5555'")
    if proto.lower() not in TRANSPORTS:
        known = ", ".join(sorted(TRANSPORTS))
        raise _invalid(url, f"unknown transport {proto!r}; zmq knows {known}")
    if not addr:
        raise _invalid(url, "the address after '://' is empty")
    if proto.lower() in _HOST_PORT:
        if proto.lower() in {"ws", "wss"}:
            addr = addr.partition("/")[0]  # ws://host:port/path
        host, port = _host_port(url, addr)
        _check_host(url, host, bracketed=addr.startswith("["))
        _check_port(url, port)
    return True


def validate_url_container(container: str | Iterable[object]) -> None:
    """Validate every url in a url, or in a (nested) list, tuple, set or dict of urls.

    Dict values are checked, keys are not.

    Raises
    ------
    TypeError, ValueError
        As `validate_url`, for the first bad url; a ``TypeError`` too for an item that
        is neither a str nor a container.

    .. versionadded:: 0.1
    """
    _validate_url_container(container)


def _validate_url_container(container: object) -> None:
    if isinstance(container, str):
        validate_url(container)
        return
    if isinstance(container, bytes | bytearray):
        raise TypeError(f"a zmq url must be a str, got {type(container).__name__}: {container!r}")
    items = container.values() if isinstance(container, Mapping) else container
    if not isinstance(items, Iterable):
        raise TypeError(
            f"expected a url or a container of urls, got {type(container).__name__}: {container!r}"
        )
    for item in items:
        _validate_url_container(item)


def split_url(url: str) -> tuple[str, str, str]:
    """Split ``proto://host:port`` into ``(proto, host, port)``, all str.

    An IPv6 host comes back without its brackets: ``tcp://[::1]:5555`` gives
    ``("tcp", "::1", "5555")``. Nothing is validated beyond the shape (see
    `validate_url`).

    Raises
    ------
    ValueError
        When ``url`` is not of the form ``proto://host:port`` (an ``ipc`` url, say).

    .. versionadded:: 0.1
    """
    proto, sep, addr = url.partition("://")
    if not sep:
        raise _invalid(url, "expected 'proto://host:port'")
    host, port = _host_port(url, addr)
    return proto, host, port


def _addresses_of(name: str) -> set[str]:
    try:
        return {str(info[4][0]) for info in socket.getaddrinfo(name, None)}
    except OSError:
        return set()


def _route_address(family: socket.AddressFamily, probe: str) -> set[str]:
    """The address of the interface holding the route to ``probe``.

    A UDP ``connect()`` only picks the route; it sends nothing.
    """
    try:
        with socket.socket(family, socket.SOCK_DGRAM) as s:
            s.connect((probe, 9))
            return {str(s.getsockname()[0])}
    except OSError:
        return set()  # no route (or no IPv6)


@functools.cache
def _local_ips() -> frozenset[str]:
    """The addresses by which this machine knows itself (cached; slow DNS is paid once)."""
    ips = {"127.0.0.1", "::1"}
    ips |= _addresses_of(socket.gethostname()) | _addresses_of("localhost")
    # Default-route interfaces; the probes are documentation addresses (RFC 5737, 3849).
    ips |= _route_address(socket.AF_INET, "192.0.2.1")
    ips |= _route_address(socket.AF_INET6, "2001:db8::1")
    return frozenset(ip.partition("%")[0] for ip in ips)  # drop IPv6 zone ids


def _is_local(ip: str) -> bool:
    try:
        if ipaddress.ip_address(ip).is_loopback:
            return True
    except ValueError:
        return False
    return ip in _local_ips()


def _resolve(host: str) -> list[str]:
    """The addresses ``host`` resolves to, IPv4 first (zmq connects to IPv4 by default)."""
    try:
        infos = socket.getaddrinfo(host, None, proto=socket.IPPROTO_TCP)
    except OSError:
        return []
    v4 = [str(i[4][0]) for i in infos if i[0] == socket.AF_INET]
    v6 = [str(i[4][0]) for i in infos if i[0] == socket.AF_INET6]
    return v4 + v6


def outbound_ip(host: str) -> str:
    """The address of this machine's interface on the route to ``host``.

    What a peer on ``host`` can connect back to: an engine binds its own sockets there,
    on the network that reaches its hub. A loopback ``host`` gives ``127.0.0.1``. A
    UDP ``connect()`` picks the route and sends nothing.

    Raises
    ------
    OSError
        When ``host`` does not resolve or no route leads to it.

    Examples
    --------
    >>> outbound_ip("127.0.0.1")
    '127.0.0.1'

    .. versionadded:: 0.3
    """
    addresses = [host] if _is_ip(host) else _resolve(host)
    if not addresses:
        raise OSError(f"cannot resolve host {host!r} to an address")
    ip = addresses[0]
    if ipaddress.ip_address(ip).is_loopback:
        return "::1" if ":" in ip else "127.0.0.1"
    family = socket.AF_INET6 if ":" in ip else socket.AF_INET
    found = _route_address(family, ip)
    if not found:
        raise OSError(f"no route from this machine to {host!r} ({ip})")
    return found.pop()


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def disambiguate_ip_address(ip: str, location: str | None = None) -> str:
    """Turn a wildcard address (``*``, ``0.0.0.0``, ``::``) into one a peer can connect to.

    Any other address is returned unchanged.

    Parameters
    ----------
    ip : str
        The address a socket was bound to.
    location : str, optional
        An IP address or host name of the machine where the socket was bound.
        When it is absent or is this machine, the loopback address is returned
        (``127.0.0.1``, or ``::1`` for ``::``); otherwise ``location`` (a host name
        resolved to its first address, IPv4 preferred, when it resolves).

    Examples
    --------
    >>> disambiguate_ip_address("*")
    '127.0.0.1'
    >>> disambiguate_ip_address("0.0.0.0", "203.0.113.7")
    '203.0.113.7'
    >>> disambiguate_ip_address("10.1.2.3", "203.0.113.7")
    '10.1.2.3'

    .. versionadded:: 0.1
    """
    if ip == _WILDCARD_V6:
        loopback = "::1"
    elif ip in _WILDCARDS_V4:
        loopback = "127.0.0.1"
    else:
        return ip
    if not location:
        return loopback
    if _is_ip(location):
        return loopback if _is_local(location) else location
    if location.lower() in {socket.gethostname().lower(), "localhost"}:
        return loopback
    addresses = _resolve(location)
    if any(_is_local(a) for a in addresses):
        return loopback
    # Unresolvable here: keep the name and let zmq resolve it when it connects.
    return addresses[0] if addresses else location


def disambiguate_url(url: str, location: str | None = None) -> str:
    """Turn a bind url such as ``tcp://*:5555`` into a url to connect to.

    The host goes through `disambiguate_ip_address`; a url of another transport than
    ``tcp``, ``ws``, ``wss`` or ``udp`` (``ipc://``, ``inproc://``) or one without
    ``host:port`` is returned unchanged.

    Examples
    --------
    >>> disambiguate_url("tcp://*:5555")
    'tcp://127.0.0.1:5555'
    >>> disambiguate_url("tcp://0.0.0.0:5555", location="203.0.113.7")
    'tcp://203.0.113.7:5555'
    >>> disambiguate_url("ipc:///tmp/hub.sock")
    'ipc:///tmp/hub.sock'

    .. versionadded:: 0.1
    """
    try:
        proto, host, port = split_url(url)
    except ValueError:
        return url
    if proto.lower() not in _HOST_PORT:
        return url
    host = disambiguate_ip_address(host, location)
    if ":" in host:
        host = f"[{host}]"
    return f"{proto}://{host}:{port}"
