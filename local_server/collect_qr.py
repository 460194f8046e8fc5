"""ODK Collect's settings QR code and the LAN addresses a phone can reach.

Collect's settings QR (``docs/collect-import-export``): the JSON
``{"general": {"server_url": …, "username": …}, "admin": {}}`` compressed with zlib and
base64-encoded.  No password goes in it: the collector types it once.
"""

from __future__ import annotations

import base64
import io
import json
import socket
import zlib
from typing import Any

import segno


def collect_payload(server_url: str, username: str | None = None,
                    project_name: str | None = None) -> str:
    general: dict[str, Any] = {"server_url": server_url}
    if username:
        general["username"] = username
    settings: dict[str, Any] = {"general": general, "admin": {}}
    if project_name:
        settings["project"] = {"name": project_name}
    raw = json.dumps(settings, separators=(",", ":")).encode()
    return base64.b64encode(zlib.compress(raw)).decode()


def decode_payload(payload: str) -> dict[str, Any]:
    return json.loads(zlib.decompress(base64.b64decode(payload)))  # type: ignore[no-any-return]


def qr_png(payload: str, scale: int = 6) -> bytes:
    out = io.BytesIO()
    segno.make(payload, error="m").save(out, kind="png", scale=scale, border=4)
    return out.getvalue()


def qr_svg(payload: str, scale: int = 4) -> str:
    out = io.BytesIO()
    segno.make(payload, error="m").save(out, kind="svg", scale=scale, border=4)
    return out.getvalue().decode()


def qr_terminal(payload: str) -> str:
    out = io.StringIO()
    segno.make(payload, error="m").terminal(out=out, compact=True, border=2)
    return out.getvalue()


def lan_addresses(host: str = "0.0.0.0") -> list[str]:
    """IPv4 addresses of this machine a phone on the LAN can use (never loopback)."""
    if host not in ("0.0.0.0", "", "::"):
        return [host]
    found: list[str] = []
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.connect(("10.255.255.255", 1))  # no packet is sent: picks the outgoing address
            found.append(s.getsockname()[0])
    except OSError:
        pass
    try:
        for info in socket.getaddrinfo(socket.gethostname(), None, socket.AF_INET):
            found.append(str(info[4][0]))
    except OSError:
        pass
    out = []
    for ip in found:
        if not ip.startswith("127.") and ip not in out:
            out.append(ip)
    return out
