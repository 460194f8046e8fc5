"""Server settings: one frozen dataclass, filled by ``georeg serve`` (defaults suit a LAN)."""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass

from storage.errors import InvalidInput

Network = ipaddress.IPv4Network | ipaddress.IPv6Network

#: What every OpenRosa response says the server accepts (HEAD /submission, POST).
DEFAULT_MAX_BODY = 100 * 1024 * 1024


@dataclass(frozen=True)
class ServerSettings:
    #: Largest request body accepted (bytes); bigger → 413.  Also announced to Collect
    #: as ``X-OpenRosa-Accept-Content-Length``.
    max_body: int = DEFAULT_MAX_BODY
    #: HTTP Digest realm; the stored HA1 values are per realm (``georeg users add`` uses it).
    realm: str = "georeg"
    #: Seconds a Digest nonce stays valid; an older one gets ``stale=true``.
    nonce_seconds: int = 300
    #: Basic authentication is answered only over https (behind a TLS proxy set this).
    https: bool = False
    #: A fixed public base URL (``http://192.168.1.10:8080``); None → built from Host.
    base_url: str | None = None
    #: SQLite/GeoPackage: fsync every commit (``synchronous = FULL``), so a submission
    #: answered 201 survives a power cut, not only a crash.
    durable_commits: bool = True
    #: Start the sync scheduler in-process (``georeg serve``).
    scheduler: bool = False
    #: With several worker processes (``serve --workers N``): an SQLite file they share
    #: for Digest replay protection, so a captured answer replayed to another worker is
    #: refused too.  None: the counts stay in this process's memory (one process).
    replay_store: str | None = None
    #: Reverse proxies (addresses or networks such as ``10.0.0.0/8``) whose
    #: ``X-Forwarded-For`` is believed: for a connection from one of them the client is
    #: the right-most address in that header that is not itself a listed proxy.  Empty
    #: (the default): the header is never believed, as any client can send it.
    trusted_proxies: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        proxy_networks(self.trusted_proxies)  # a typo fails at start-up, not per request


def proxy_networks(values: Iterable[str]) -> tuple[Network, ...]:
    """The networks of ``--trusted-proxy`` values (an address is a one-address network);
    :class:`InvalidInput` naming a value that is neither."""
    out = []
    for value in values:
        try:
            out.append(ipaddress.ip_network(str(value).strip(), strict=False))
        except ValueError:
            raise InvalidInput(
                f"Trusted proxy {value!r} is not an IP address or network (such as "
                "127.0.0.1, ::1 or 10.0.0.0/8); host names are not accepted.",
                parameter="trusted_proxy") from None
    return tuple(out)
