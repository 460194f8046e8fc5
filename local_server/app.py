"""The WSGI application of ``georeg serve`` (Werkzeug routing, one error translation).

Routes come from the modules in :data:`ROUTE_MODULES`; each exposes
``rules() -> list[werkzeug.routing.Rule]`` whose endpoint is a handler
``handler(request, ctx, **url_args) -> Response``.  A module that does not exist (yet)
is skipped.  Use :class:`OpenRosaRule` for routes ODK Collect calls: their errors are
answered as an ``OpenRosaResponse`` XML envelope instead of JSON.

``ctx`` (:class:`RequestContext`) holds the open registry, the settings, the signed-in
user (after ``auth.authenticate``/``auth.require``), the ``deviceID`` and helpers
(``base_url()``, ``require(role)``).  Attributes set on it whose names start with ``_``
are shared between requests (a per-app cache).

Every response carries ``X-OpenRosa-Version: 1.0`` and ``Date``; our errors
(:mod:`storage.errors`) become their HTTP status with a JSON body
``{"error", "message", "details"}``; any other exception is logged to stderr and
answered 500 without a traceback; bodies over ``settings.max_body`` get 413.

Behind a reverse proxy listed in ``settings.trusted_proxies`` the request's
``remote_addr`` is the client the proxy forwards for (:func:`client_address`; the proxy
itself is kept in ``environ["georeg.proxy_peer"]``); otherwise it is the connection's.
"""

from __future__ import annotations

import functools
import importlib
import ipaddress
import json
import sys
import traceback
import uuid
from collections.abc import Iterable
from pathlib import Path
from typing import Any
from xml.sax.saxutils import escape

from sqlalchemy import event
from werkzeug.exceptions import HTTPException, RequestEntityTooLarge
from werkzeug.http import http_date
from werkzeug.routing import Map, Rule
from werkzeug.wrappers import Request, Response

from local_server.settings import Network, ServerSettings, proxy_networks
from storage.backends import Backend
from storage.errors import GeoregError
from storage.registry import Registry

ROUTE_MODULES = ("local_server.openrosa", "local_server.iaso_api", "local_server.rest_api",
                 "local_server.pages")

OPENROSA_NS = "http://openrosa.org/http/response"


class OpenRosaRule(Rule):
    """A route ODK Collect calls: errors as OpenRosa XML."""

    openrosa = True


class RequestContext:
    """Per request: registry, settings, user, device id; ``_names`` shared per app."""

    def __init__(self, app: GeoregApp, request: Request) -> None:
        object.__setattr__(self, "_shared", app.shared)
        self.app = app
        self.registry: Registry = app.registry
        self.settings: ServerSettings = app.settings
        self.request = request
        self.user: Any = None
        self.stale_nonce = False
        self.device_id: str | None = request.args.get("deviceID")

    def __getattr__(self, name: str) -> Any:
        shared = object.__getattribute__(self, "_shared")
        if name in shared:
            return shared[name]
        raise AttributeError(name)

    def __setattr__(self, name: str, value: Any) -> None:
        if name.startswith("_"):
            self._shared[name] = value
        else:
            object.__setattr__(self, name, value)

    # helpers
    def base_url(self) -> str:
        """``http://host:port`` as the client addressed us (absolute URLs for Collect)."""
        if self.settings.base_url:
            return self.settings.base_url.rstrip("/")
        return self.request.host_url.rstrip("/")

    def url(self, path: str) -> str:
        return self.base_url() + self.request.script_root + path

    def require(self, role: str = "collector") -> Any:
        from local_server import auth

        return auth.require(self.request, self, role=role)

    def authenticate(self) -> Any:
        from local_server import auth

        return auth.authenticate(self.request, self)


def load_rules(modules: Iterable[str] = ROUTE_MODULES) -> list[Rule]:
    rules: list[Rule] = []
    for name in modules:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as error:
            if error.name == name:
                continue
            raise
        rules.extend(module.rules())
    return rules


def openrosa_xml(message: str, nature: str = "", status: int = 201) -> Response:
    attr = f' nature="{escape(nature)}"' if nature else ""
    body = (f'<OpenRosaResponse xmlns="{OPENROSA_NS}"><message{attr}>{escape(message)}'
            f"</message></OpenRosaResponse>")
    return Response(body, status=status, content_type="text/xml; charset=utf-8")


def json_response(data: Any, status: int = 200) -> Response:
    return Response(json.dumps(data, ensure_ascii=False, default=str), status=status,
                    content_type="application/json")


def _ip(text: str) -> Any:
    """The address in one ``X-Forwarded-For`` entry (``[v6]:port`` and ``v4:port`` are
    accepted; an IPv4-mapped IPv6 address is its IPv4 one), None for anything else."""
    text = text.strip()
    if text.startswith("["):
        text = text[1:text.find("]")] if "]" in text else ""
    elif text.count(":") == 1:
        text = text.split(":")[0]
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return None
    mapped = getattr(address, "ipv4_mapped", None)
    return mapped if mapped is not None else address


def client_address(peer: str | None, forwarded_for: str | None,
                   trusted: tuple[Network, ...]) -> str | None:
    """Who is calling: the connection's address, unless it comes from a trusted proxy.

    Then ``X-Forwarded-For`` (``client, proxy1, proxy2``: each proxy appends the address
    it was called from) is read from the right: the right-most entry that is not itself
    a trusted proxy is the client; the entries left of it could have been written by
    anyone, so they are never looked at.  An entry that is not an address ends the walk
    at the last trusted hop (the clients behind it then share that address: safe).
    With no trusted proxies the header is never read: any client can send one."""
    if not trusted or peer is None:
        return peer
    current = _ip(peer)
    if current is None or not any(current in net for net in trusted):
        return peer
    client = str(current)
    for entry in reversed((forwarded_for or "").split(",")):
        hop = _ip(entry)
        if hop is None:
            break
        client = str(hop)
        if not any(hop in net for net in trusted):
            break
    return client


def proxy_waitress_options(settings: ServerSettings) -> dict[str, Any]:
    """waitress removes ``X-Forwarded-*`` headers itself unless told not to: kept when
    proxies are trusted (the app then reads ``X-Forwarded-For`` from those alone, see
    :func:`client_address`), removed otherwise."""
    return {"clear_untrusted_proxy_headers": not settings.trusted_proxies}


class GeoregApp:
    def __init__(self, registry: Registry, settings: ServerSettings,
                 modules: Iterable[str] = ROUTE_MODULES) -> None:
        self.registry = registry
        self.settings = settings
        self.trusted_proxies = proxy_networks(settings.trusted_proxies)
        self.shared: dict[str, Any] = {}
        self.url_map = Map(load_rules(modules), strict_slashes=False,
                           merge_slashes=False)

    def close(self) -> None:
        self.registry.close()

    # --- errors -----------------------------------------------------------------------

    def _is_openrosa(self, request: Request, rule: Rule | None) -> bool:
        if rule is not None:
            return bool(getattr(rule, "openrosa", False))
        return "X-OpenRosa-Version" in request.headers

    def error_response(self, ctx: RequestContext, openrosa: bool, status: int,
                       code: str, message: str, details: dict[str, Any] | None = None
                       ) -> Response:
        if openrosa:
            response = openrosa_xml(message, nature="error", status=status)
        else:
            response = json_response({"error": code, "message": message,
                                      "details": details or {}}, status=status)
        if status == 401:
            from local_server import auth

            response.headers.update(auth.challenge_headers(ctx, stale=ctx.stale_nonce))
        return response

    # --- dispatch ---------------------------------------------------------------------

    def dispatch(self, request: Request, ctx: RequestContext) -> Response:
        rule: Rule | None = None
        try:
            length = request.content_length
            if length is not None and length > self.settings.max_body:
                raise RequestEntityTooLarge()
            adapter = self.url_map.bind_to_environ(request.environ)
            rule, args = adapter.match(return_rule=True)
            handler = rule.endpoint
            return handler(request, ctx, **args)  # type: ignore[no-any-return, operator]
        except GeoregError as error:
            response = self.error_response(ctx, self._is_openrosa(request, rule),
                                           error.http_status, error.code, error.message,
                                           error.details)
            retry_after = getattr(error, "retry_after", None)  # auth.TooManyAttempts (429)
            if retry_after is not None:
                response.headers["Retry-After"] = str(retry_after)
            return response
        except HTTPException as error:
            if error.code is None or error.code < 400:
                return error.get_response(request.environ)  # redirects
            message = {
                404: "Nothing here: check the address.",
                405: f"Method {request.method} is not allowed here.",
                413: f"The request is larger than this server accepts "
                     f"({self.settings.max_body} bytes).",
            }.get(error.code, error.description or error.name)
            response = self.error_response(ctx, self._is_openrosa(request, rule), error.code,
                                           error.name.lower().replace(" ", "_"), message)
            for key, value in error.get_headers():
                if key.lower() == "allow":
                    response.headers["Allow"] = value
            return response
        except Exception:  # noqa: BLE001 - never leak a traceback to the client
            ref = uuid.uuid4().hex[:12]
            print(f"[georeg serve] error {ref} on {request.method} {request.path}:",
                  file=sys.stderr)
            traceback.print_exc(file=sys.stderr)
            return self.error_response(
                ctx, self._is_openrosa(request, rule), 500, "server_error",
                f"The server failed on this request (reference {ref}); the details are in "
                "the server's log.")

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        if self.trusted_proxies:  # the client behind a trusted proxy (sign-in limits, logs)
            peer = environ.get("REMOTE_ADDR")
            environ["georeg.proxy_peer"] = peer
            environ["REMOTE_ADDR"] = client_address(
                peer, environ.get("HTTP_X_FORWARDED_FOR"), self.trusted_proxies)
        request = Request(environ)
        request.max_content_length = self.settings.max_body
        request.max_form_memory_size = self.settings.max_body
        ctx = RequestContext(self, request)
        from local_server import auth, jwt

        # tokens issued or checked in this request carry the user's credential stamp
        stamps = jwt.CREDENTIALS.set(functools.partial(auth.stored_credential, ctx))
        try:
            response = self.dispatch(request, ctx)
        finally:
            jwt.CREDENTIALS.reset(stamps)
        response.headers["X-OpenRosa-Version"] = "1.0"
        response.headers["Date"] = http_date()
        response.headers["X-OpenRosa-Accept-Content-Length"] = str(self.settings.max_body)
        return response(environ, start_response)


def create_app(registry_location: str | Path | Registry,
               settings: ServerSettings | None = None) -> GeoregApp:
    """The WSGI app for one registry (opened once; connections are pooled)."""
    settings = settings or ServerSettings()
    reg = (registry_location if isinstance(registry_location, Registry)
           else Registry.open(registry_location))
    if settings.durable_commits and reg.backend is not Backend.POSTGIS:
        _full_sync(reg)
    return GeoregApp(reg, settings)


def _full_sync(reg: Registry) -> None:
    """``PRAGMA synchronous = FULL`` on the server's SQLite connections: an acknowledged
    submission survives a power cut too, not only a crash of the process."""

    def on_connect(dbapi_conn: Any, _record: Any) -> None:
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA synchronous = FULL")
        cur.close()

    event.listen(reg.engine, "connect", on_connect)
    reg.engine.dispose()
