"""Transport addresses: the one parser and formatter for ``ip:port`` text.

``Address`` is ``(ip, port)`` with the IP as text, unbracketed. Written forms are ``1.2.3.4:5``
and ``[2001:db8::1]:5`` (brackets required for IPv6, so that the port is never ambiguous).
"""

from __future__ import annotations

import ipaddress

Address = tuple[str, int]


def format_address(addr: Address | None) -> str:
    """``ip:port``, or ``[ip6]:port``; ``-`` for None (log fields)."""
    if addr is None:
        return "-"
    host, port = addr
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def split_host_port(text: str) -> tuple[str, int]:
    """``HOST:PORT`` or ``[HOST]:PORT`` where HOST may be a name; raises ValueError with the reason."""
    host, sep, port = text.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    elif ":" in host:
        raise ValueError(f"{text!r}: IPv6 addresses must be written [addr]:port")
    if not sep or not host or not port.isascii() or not port.isdigit():
        raise ValueError(f"{text!r} is not ip:port or [ipv6]:port")
    number = int(port)
    if not 0 < number < 65536:
        raise ValueError(f"{text!r} has port out of range")
    return host, number


def parse_address(text: str) -> Address:
    """``ip:port`` or ``[ip6]:port`` (no names); raises ValueError with the reason."""
    host, port = split_host_port(text)
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        raise ValueError(f"{text!r} does not hold an IP address") from None
    if (ip.version == 6) != text.startswith("["):
        raise ValueError(f"{text!r}: IPv6 addresses must be written [addr]:port, IPv4 without brackets")
    return str(ip), port


def family(addr: Address) -> int:
    """4 or 6, from the textual form (every Address holds a normalised IP)."""
    return 6 if ":" in addr[0] else 4
