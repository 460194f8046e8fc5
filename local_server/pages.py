"""Web pages for the team lead, server-rendered with Jinja2 (no front-end build, nothing
fetched from the internet): status, the QR code that configures ODK Collect, submissions
with a map (inline SVG), change-request review.

Sign-in is a form (``/login``) that sets an HttpOnly, SameSite=Strict session cookie (a
signed token, as for the Iaso app, stamped with the user's credentials so a changed
password signs it out; ``Secure`` behind https); HTTP Digest works too.  Every POST form
carries a CSRF token bound to the session and is refused without it, or from another
origin.  Signing out (POST ``/logout``) also remembers the session id as signed out.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
import unicodedata
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

import shapely
from jinja2 import Environment, FileSystemLoader, select_autoescape
from shapely.geometry.base import BaseGeometry
from sqlalchemy import text
from werkzeug.routing import Rule
from werkzeug.utils import redirect
from werkzeug.wrappers import Request, Response

from local_server import auth
from local_server import server_glue as glue
from local_server.jwt import InvalidToken, decode, encode, stamped
from local_server.svg_map import MapPoint, render_svg
from storage import change_requests as cr
from storage import geometry, tree, versions
from storage.errors import GeoregError, InvalidInput

TEMPLATES = Path(__file__).parent / "templates"
SESSION_COOKIE = "georeg_session"
SESSION_SECONDS = 12 * 3600
_env = Environment(loader=FileSystemLoader(str(TEMPLATES)),
                   autoescape=select_autoescape(["html"]), trim_blocks=True, lstrip_blocks=True)


class LoginRequired(Exception):
    pass


def render(name: str, http_status: int = 200, **values: Any) -> Response:
    html = _env.get_template(name).render(**values)
    return Response(html, status=http_status, content_type="text/html; charset=utf-8",
                    headers={"X-Frame-Options": "DENY", "Cache-Control": "no-store",
                             "Content-Security-Policy": "default-src 'self'; img-src 'self' "
                             "data:; style-src 'self' 'unsafe-inline'; form-action 'self'"})


# --- sessions and CSRF ---------------------------------------------------------------------


def _session(request: Request, ctx: Any) -> dict[str, Any] | None:
    token = request.cookies.get(SESSION_COOKIE)
    if not token:
        return None
    try:
        claims = decode(token, glue.signing_key(ctx), token_type="session")
    except InvalidToken:
        return None  # expired, forged, or its user changed password / was removed
    if auth.session_revoked(ctx, str(claims.get("jti"))):
        return None
    return claims


def page_user(request: Request, ctx: Any) -> tuple[Any, str]:
    """The signed-in user and the id their CSRF tokens are bound to."""
    claims = _session(request, ctx)
    if claims is not None:
        user = glue.find_user(ctx, str(claims.get("username")))
        if user is not None:
            return user, str(claims.get("jti"))
    if request.headers.get("Authorization"):
        user = glue.require_user(request, ctx)
        return user, "header:" + glue.user_name(user)
    raise LoginRequired()


def csrf_token(ctx: Any, bound: str) -> str:
    return hmac.new(glue.signing_key(ctx), b"csrf:" + bound.encode(), hashlib.sha256).hexdigest()


def check_csrf(request: Request, ctx: Any, bound: str) -> None:
    origin = request.headers.get("Origin")
    if origin and origin != "null" and urlsplit(origin).netloc != request.host:
        raise InvalidInput("This form was sent from another site; refused.")
    sent = request.form.get("csrf_token", "")
    if not hmac.compare_digest(sent, csrf_token(ctx, bound)):
        raise InvalidInput("The form's security token is missing or stale: reload the page "
                           "and try again.")


def _base(request: Request, ctx: Any, user: Any, bound: str) -> dict[str, Any]:
    return {"user": glue.user_name(user), "role": glue.user_role(user),
            "csrf": csrf_token(ctx, bound), "path": request.path}


def _guard(handler: Any) -> Any:
    def run(request: Request, ctx: Any, **kw: Any) -> Response:
        try:
            user, bound = page_user(request, ctx)
            return handler(request, ctx, user, bound, **kw)
        except LoginRequired:
            return redirect("/login?next=" + quote(request.full_path.rstrip("?"), safe="/?=&"))
        except GeoregError as error:
            response = render("error.html", http_status=error.http_status,
                              message=error.message, user=None)
            if isinstance(error, auth.TooManyAttempts):
                response.headers["Retry-After"] = str(error.retry_after)
            return response

    run.__name__ = handler.__name__
    return run


# --- login ----------------------------------------------------------------------------


def login_page(request: Request, ctx: Any) -> Response:
    next_url = _safe_next(request.args.get("next"))
    if request.method == "GET":
        return render("login.html", next=next_url, error=None, user=None)
    username = request.form.get("username", "")
    password = request.form.get("password", "")
    try:
        user = glue.check_password(ctx, username, password) if username and password else None
    except auth.TooManyAttempts as error:
        response = render("login.html", http_status=429, next=next_url, user=None,
                          error=error.message)
        response.headers["Retry-After"] = str(error.retry_after)
        return response
    if user is None:
        return render("login.html", http_status=401, next=next_url, user=None,
                      error="Wrong user name or password.")
    now = int(time.time())
    key = glue.signing_key(ctx)
    token = encode(stamped({"username": glue.user_name(user), "token_type": "session",
                            "iat": now, "exp": now + SESSION_SECONDS,
                            "jti": secrets.token_hex(16)}, key), key)
    response = redirect(next_url)
    response.set_cookie(SESSION_COOKIE, token, max_age=SESSION_SECONDS, httponly=True,
                        samesite="Strict", path="/", secure=auth.is_https(request, ctx))
    return response


def logout_page(request: Request, ctx: Any) -> Response:
    """Sign out: refused from another site (a valid CSRF token, or at least an Origin or
    Referer naming this server); the session id is remembered as signed out, so a copy of
    the cookie no longer works either."""
    claims = _session(request, ctx)
    if claims is not None:
        try:
            if request.form.get("csrf_token") is not None or not _same_site(request):
                check_csrf(request, ctx, str(claims.get("jti")))
        except InvalidInput as error:
            return render("error.html", http_status=400, message=error.message, user=None)
        auth.revoke_session(ctx, str(claims.get("jti")), float(claims.get("exp", 0)))
    response = redirect("/login", code=303)
    if SESSION_COOKIE in request.cookies:  # (a cross-site request carries none: Strict)
        response.delete_cookie(SESSION_COOKIE, path="/", httponly=True, samesite="Strict",
                               secure=auth.is_https(request, ctx))
    return response


def _same_site(request: Request) -> bool:
    """Does the request say (Origin, else Referer) it comes from a page of this server?"""
    origin = request.headers.get("Origin") or request.headers.get("Referer") or ""
    return bool(origin) and origin != "null" and urlsplit(origin).netloc == request.host


def _safe_next(value: str | None) -> str:
    """Where to go after signing in: only a path on this site, else '/'.  Browsers drop
    tabs and line breaks inside a URL and read a backslash as a slash, so ``/<TAB>/evil``
    or ``/\\evil`` would leave the site: any control character, whitespace or backslash,
    a scheme or a host refuses the value."""
    if not value or not value.startswith("/") or value.startswith("//") or "\\" in value:
        return "/"
    if any(c.isspace() or unicodedata.category(c) == "Cc" for c in value):
        return "/"
    parts = urlsplit(value)
    if parts.scheme or parts.netloc:
        return "/"
    return value


# --- status -----------------------------------------------------------------------------


def status_data(ctx: Any, staff: bool = True) -> dict[str, Any]:
    """What the status page shows.  ``staff`` (reviewers, admins) also get the registry's
    location, the sync targets, the scheduled jobs with their last and next runs, and the
    latest runs — whose errors name the upstream servers, not a collector's business."""
    reg = glue.registry(ctx)
    sources = versions.list_sources(reg)
    for source in sources:
        source["version_list"] = versions.list_versions(reg, source["name"])
        try:
            source["counts"] = tree.counts(reg, source["name"])
        except GeoregError:
            source["counts"] = None
    out: dict[str, Any] = {"sources": sources, "staff": staff}
    if not staff:
        return out
    from sync.scheduler import list_jobs

    with reg.read() as conn:
        sync = [dict(r._mapping) for r in conn.execute(text(
            "SELECT target, kind, last_change_id, last_pull_marker, updated_at FROM sync_state "
            "ORDER BY target"))]
        runs = [dict(r._mapping) for r in conn.execute(text(
            "SELECT job_name, kind, triggered_by, attempt, started_at, ended_at, outcome, "
            "error FROM schedule_run ORDER BY fid DESC LIMIT 10"))]
        pending = conn.execute(text(
            "SELECT count(*) FROM change_request WHERE status = 'new'")).scalar_one()
    return out | {"registry": reg.location.display(), "sync": sync, "runs": runs,
                  "jobs": list_jobs(reg), "pending_changes": int(pending)}


def status_page(request: Request, ctx: Any, user: Any, bound: str) -> Response:
    data = status_data(ctx, staff=glue.user_role(user) in ("reviewer", "admin"))
    recent = glue.recent_submissions(ctx, user, limit=10)
    return render("status.html", **_base(request, ctx, user, bound), **data, recent=recent)


def qr_page(request: Request, ctx: Any, user: Any, bound: str) -> Response:
    qr = glue.collect_qr(ctx, request, user)
    return render("qr.html", **_base(request, ctx, user, bound), **qr)


# --- submissions ----------------------------------------------------------------------------


def _territories(ctx: Any, limit: int = 400) -> list[tuple[str, BaseGeometry]]:
    """The shallowest level below the roots that has territories (districts, usually),
    for the backdrop; the roots' own outline only when no level below has any.  (Levels
    count from 1 = the roots: the filter was once ``depth > 0``, which is every unit, so
    the backdrop was the country's outline alone.)"""
    reg = glue.registry(ctx)
    with reg.read() as conn:
        try:
            from local_server.rest_api import default_source
            from storage.versions import resolve_version

            version = resolve_version(conn, default_source(conn))
        except GeoregError:
            return []
        depth = conn.execute(text(
            "SELECT min(u.depth) FROM org_unit_territory t JOIN org_unit u ON u.fid = t.unit_fid "
            "WHERE u.version_id = :v AND u.depth > 1"), {"v": version.id}).scalar()
        if depth is None:
            depth = conn.execute(text(
                "SELECT min(u.depth) FROM org_unit_territory t JOIN org_unit u ON "
                "u.fid = t.unit_fid WHERE u.version_id = :v"), {"v": version.id}).scalar()
        if depth is None:
            return []
        rows = conn.execute(text(
            f"SELECT u.name, {geometry.select_sql(reg.backend, 't.territory')} FROM "
            "org_unit_territory t JOIN org_unit u ON u.fid = t.unit_fid WHERE u.version_id = :v "
            "AND u.depth = :d LIMIT :lim"), {"v": version.id, "d": depth, "lim": limit}).all()
    return [(r[0], geometry.decode(reg.backend, r[1])) for r in rows]


def submissions_page(request: Request, ctx: Any, user: Any, bound: str) -> Response:
    form = request.args.get("form") or None
    data = glue.list_submissions(ctx, user, form=form, since=None, page=1, limit=200)
    points = [MapPoint(s["location"][0], s["location"][1],
                       f"{s.get('form_id') or ''} {s.get('instance_id') or ''}".strip())
              for s in data["results"] if s.get("location")]
    svg = render_svg(_territories(ctx), points, title="Submissions")
    return render("submissions.html", **_base(request, ctx, user, bound),
                  submissions=data["results"], count=data["count"], form=form, map_svg=svg,
                  forms=data.get("forms", []))


# --- change requests ------------------------------------------------------------------------


def changes_page(request: Request, ctx: Any, user: Any, bound: str) -> Response:
    status = request.args.get("status", "new")
    if status not in (*cr.STATUSES, "all"):
        status = "new"
    reg = glue.registry(ctx)
    with reg.read() as conn:
        within = glue.user_version_paths(conn, user)
    data = cr.list_change_requests(reg, status=None if status == "all" else status,
                                   visible_within=within, limit=200)
    return render("changes.html", **_base(request, ctx, user, bound), requests=data["results"],
                  count=data["count"], status=status, statuses=(*cr.STATUSES, "all"))


def _change(ctx: Any, user: Any, ident: str) -> dict[str, Any]:
    from local_server.rest_api import _visible_change

    reg = glue.registry(ctx)
    data = cr.get_change_request(reg, ident)
    with reg.read() as conn:
        _visible_change(conn, user, data)
    return data


SIBLINGS_ON_MAP = 300


def _change_context(ctx: Any, data: dict[str, Any]) -> dict[str, Any]:
    """What a reviewer needs around a proposed location: the territory of the unit's
    parent (or nearest ancestor that has one) and the other units under that parent —
    a "new" facility drawn next to an existing one is likely a duplicate."""
    reg = glue.registry(ctx)
    v, unit = data["version_id"], data.get("unit_uuid")
    with reg.read() as conn:
        parent_uuid = (data.get("new") or {}).get("parent")
        if parent_uuid is None and unit:
            parent_uuid = conn.execute(text(
                "SELECT p.uuid FROM org_unit u JOIN org_unit p ON p.version_id = u.version_id "
                "AND p.unit_key = u.parent_key WHERE u.version_id = :v AND u.uuid = :u"),
                {"v": v, "u": unit}).scalar()
        if parent_uuid is None:
            return {"territories": [], "siblings": [], "parent": None}
        parent = conn.execute(text(
            "SELECT unit_key, path, name FROM org_unit WHERE version_id = :v AND uuid = :p"),
            {"v": v, "p": parent_uuid}).first()
        if parent is None:
            return {"territories": [], "siblings": [], "parent": None}
        keys = [int(k) for k in parent.path.strip("/").split("/") if k]
        binds = ", ".join(f":k{i}" for i in range(len(keys)))
        ter = conn.execute(text(
            f"SELECT u.name, {geometry.select_sql(reg.backend, 't.territory')} FROM org_unit u "
            "JOIN org_unit_territory t ON t.unit_fid = u.fid WHERE u.version_id = :v AND "
            f"u.unit_key IN ({binds}) ORDER BY u.depth DESC LIMIT 1"),
            {"v": v} | {f"k{i}": k for i, k in enumerate(keys)}).first()
        rows = conn.execute(text(
            f"SELECT name, {geometry.select_sql(reg.backend, 'location')} FROM org_unit "
            "WHERE version_id = :v AND parent_key = :k AND location IS NOT NULL "
            "AND (:u IS NULL OR uuid <> :u) ORDER BY name LIMIT :lim"),
            {"v": v, "k": parent.unit_key, "u": unit, "lim": SIBLINGS_ON_MAP}).all()
    territory = geometry.decode(reg.backend, ter[1]) if ter is not None else None
    siblings = []
    for name, blob in rows:
        point = geometry.decode(reg.backend, blob)
        if point is not None and not point.is_empty:
            siblings.append(MapPoint(point.x, point.y, name, colour="#868e96", radius=2.5))
    return {"territories": ([(ter[0], territory)] if ter is not None and territory is not None
                            else []),
            "siblings": siblings, "parent": parent.name,
            "territory_name": ter[0] if ter is not None else None, "territory": territory}


def change_page(request: Request, ctx: Any, user: Any, bound: str, ident: str) -> Response:
    data = _change(ctx, user, ident)
    points = []
    for key, label, colour in (("old", "now", "#495057"), ("new", "proposed", "#d9480f")):
        loc = (data.get(key) or {}).get("location")
        if loc:
            points.append(MapPoint(loc[0], loc[1], f"{label}: {loc[1]:.5f}, {loc[0]:.5f}",
                                   colour=colour))
    context: dict[str, Any] = {"territories": [], "siblings": [], "parent": None}
    outside = None
    svg = None
    if points:
        context = _change_context(ctx, data)
        proposed = (data.get("new") or {}).get("location")
        territory = context.get("territory")
        if proposed and territory is not None and not territory.covers(
                shapely.Point(proposed[0], proposed[1])):
            outside = context["territory_name"]
        svg = render_svg(context["territories"], context["siblings"] + points, width=480,
                         height=320, title="Location")
    can_review = glue.user_role(user) in ("reviewer", "admin") and data["status"] == "new"
    return render("change.html", **_base(request, ctx, user, bound), cr=data, map_svg=svg,
                  can_review=can_review, message=request.args.get("done"),
                  error=None, fields=data["requested_fields"], context=context,
                  outside=outside)


def change_review(request: Request, ctx: Any, user: Any, bound: str, ident: str,
                  action: str) -> Response:
    check_csrf(request, ctx, bound)
    if glue.user_role(user) not in ("reviewer", "admin"):
        return render("error.html", http_status=403, **_base(request, ctx, user, bound),
                      message="Only reviewers and admins can review change requests.")
    data = _change(ctx, user, ident)
    reg = glue.registry(ctx)
    try:
        if action == "approve":
            fields = request.form.getlist("fields")
            if not fields:
                raise InvalidInput("Tick at least one field to approve, or reject the request.")
            cr.approve_change_request(reg, data["id"], reviewer=glue.user_name(user),
                                      fields=fields)
        else:
            cr.reject_change_request(reg, data["id"], reviewer=glue.user_name(user),
                                     comment=request.form.get("comment", ""))
    except GeoregError as error:
        fresh = cr.get_change_request(reg, data["id"])
        return render("change.html", http_status=error.http_status, **_base(request, ctx, user, bound),
                      cr=fresh, map_svg=None, can_review=fresh["status"] == "new",
                      message=None, error=error.message, fields=fresh["requested_fields"])
    done = "approved" if action == "approve" else "rejected"
    return redirect(f"/changes/{data['id']}?done={done}", code=303)


def change_approve(request: Request, ctx: Any, user: Any, bound: str, ident: str) -> Response:
    return change_review(request, ctx, user, bound, ident, "approve")


def change_reject(request: Request, ctx: Any, user: Any, bound: str, ident: str) -> Response:
    return change_review(request, ctx, user, bound, ident, "reject")


def rules() -> list[Rule]:
    return [
        Rule("/", endpoint=_guard(status_page), methods=["GET"]),
        Rule("/login", endpoint=login_page, methods=["GET", "POST"]),
        Rule("/logout", endpoint=logout_page, methods=["POST"]),
        Rule("/qr", endpoint=_guard(qr_page), methods=["GET"]),
        Rule("/submissions", endpoint=_guard(submissions_page), methods=["GET"]),
        Rule("/changes", endpoint=_guard(changes_page), methods=["GET"]),
        Rule("/changes/<ident>", endpoint=_guard(change_page), methods=["GET"]),
        Rule("/changes/<ident>/approve", endpoint=_guard(change_approve), methods=["POST"]),
        Rule("/changes/<ident>/reject", endpoint=_guard(change_reject), methods=["POST"]),
    ]

