"""The REST API for notebooks and the desktop app: ``/api/v1/…`` (described at
``/api/openapi.json``, see :mod:`local_server.openapi`).

Read: sources, versions, org units (filters, JSON or GeoJSON, paged), one unit, the
diff of two versions, matching links, submissions, change requests.  Write: approve or
reject a change request (reviewers and admins).  Every answer is JSON; errors use the
server's one error body ``{"error": code, "message": …, "details": {…}}``.

Authentication is the server's (HTTP Digest, or ``Authorization: Bearer`` with a token
from ``POST /api/token/``).  Collectors only see units inside their subtree.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from sqlalchemy import Connection, text
from werkzeug.routing import Rule
from werkzeug.wrappers import Request, Response

from local_server import auth
from local_server import server_glue as glue
from local_server.users import in_area
from storage import change_requests as cr
from storage import geometry, versions
from storage.backends import Backend
from storage.errors import InvalidInput, NotFound, PublishedVersionError
from storage.registry import Registry, json_value
from storage.units import row_to_dict, unit_columns, unit_joins
from storage.versions import VersionRef, resolve_version

PREFIX = "/api/v1"
MAX_LIMIT = 5000
DEFAULT_LIMIT = 100


def json_response(data: Any, status: int = 200, content_type: str = "application/json"
                  ) -> Response:
    body = json.dumps(data, ensure_ascii=False, default=str, allow_nan=False)
    return Response(body, status=status, content_type=content_type)


# --- query parameters -------------------------------------------------------------------


def int_param(request: Request, name: str, default: int | None = None, *,
              minimum: int | None = None, maximum: int | None = None) -> int | None:
    raw = request.args.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise InvalidInput(f"Query parameter {name!r} must be a whole number (got {raw!r}).",
                           parameter=name) from None
    if minimum is not None and value < minimum:
        raise InvalidInput(f"Query parameter {name!r} must be at least {minimum}.", parameter=name)
    if maximum is not None and value > maximum:
        raise InvalidInput(f"Query parameter {name!r} must be at most {maximum}.", parameter=name)
    return value


def level_param(request: Request) -> int | None:
    """``level``: a unit's depth, counted from 1 (the roots) as ``georeg tree``, ``unit
    show`` and ``orgunits.csv`` count it.  0 or less is refused (it once answered an
    empty list, which reads as "no units" rather than "wrong level")."""
    level = int_param(request, "level", None, maximum=1000)
    if level is not None and level < 1:
        raise InvalidInput(f"Query parameter 'level' must be at least 1 (got {level}): levels "
                           "start at 1 for the roots (the country), 2 for their children …",
                           parameter="level")
    return level


def paging(request: Request) -> tuple[int, int]:
    limit = int_param(request, "limit", DEFAULT_LIMIT, minimum=1, maximum=MAX_LIMIT)
    page = int_param(request, "page", 1, minimum=1, maximum=10**9)
    assert limit is not None and page is not None
    return page, limit


def envelope(key: str, results: list[Any], count: int, page: int, limit: int) -> dict[str, Any]:
    pages = max(1, -(-count // limit))
    return {"count": count, key: results, "page": page, "pages": pages, "limit": limit,
            "has_next": page < pages, "has_previous": page > 1}


def bbox_param(request: Request) -> tuple[float, float, float, float] | None:
    raw = request.args.get("bbox")
    if not raw:
        return None
    try:
        parts = [float(p) for p in raw.split(",")]
    except ValueError:
        parts = []
    if len(parts) != 4 or not all(abs(p) < 1e9 and p == p for p in parts):
        raise InvalidInput(
            f"Query parameter 'bbox' must be minlon,minlat,maxlon,maxlat (got {raw!r}).",
            parameter="bbox")
    x1, x2 = sorted(parts[0::2])
    y1, y2 = sorted(parts[1::2])
    return x1, y1, x2, y2


def version_param(conn: Connection, request: Request) -> VersionRef:
    source = request.args.get("source")
    number = int_param(request, "version", None, minimum=1, maximum=10**9)
    if not source:
        source = default_source(conn)
    return resolve_version(conn, source, number)


def default_source(conn: Connection) -> str:
    rows = conn.execute(text("SELECT name FROM data_source ORDER BY fid")).all()
    if not rows:
        raise NotFound("This registry has no data source yet.")
    return str(rows[0][0])


# --- org units ----------------------------------------------------------------------------


def _bbox_sql(backend: Backend, alias: str, params: dict[str, Any]) -> str:
    """Units whose point or territory's box meets the bbox (index-backed on every backend)."""
    if backend is Backend.POSTGIS:
        env = "ST_MakeEnvelope(:bx1, :by1, :bx2, :by2, 4326)"
        return (f"({alias}.location && {env} OR EXISTS (SELECT 1 FROM org_unit_territory bt "
                f"WHERE bt.unit_fid = {alias}.fid AND bt.territory && {env}))")
    if backend is Backend.GEOPACKAGE:
        loc, ter, pk = "rtree_org_unit_location", "rtree_org_unit_territory_territory", "id"
        box = "minx <= :bx2 AND maxx >= :bx1 AND miny <= :by2 AND maxy >= :by1"
    else:
        loc, ter, pk = "idx_org_unit_location", "idx_org_unit_territory_territory", "pkid"
        box = "xmin <= :bx2 AND xmax >= :bx1 AND ymin <= :by2 AND ymax >= :by1"
    return (f"({alias}.fid IN (SELECT {pk} FROM {loc} WHERE {box}) OR {alias}.fid IN "
            f"(SELECT bt.unit_fid FROM org_unit_territory bt WHERE bt.fid IN "
            f"(SELECT {pk} FROM {ter} WHERE {box})))")


def subtree_sql(paths: list[str] | None, alias: str, params: dict[str, Any]) -> str:
    """Restrict to a user's subtrees (None = everything)."""
    if paths is None:
        return "1 = 1"
    if not paths:
        return "1 = 0"
    parts = []
    for i, path in enumerate(paths):
        params[f"slo{i}"], params[f"shi{i}"] = path, path[:-1] + "0"
        parts.append(f"({alias}.path >= :slo{i} AND {alias}.path < :shi{i})")
    return "(" + " OR ".join(parts) + ")"


def list_org_units(reg: Registry, conn: Connection, version: VersionRef, *,
                   type_name: str | None = None, level: int | None = None,
                   parent: str | None = None, bbox: tuple[float, float, float, float] | None = None,
                   search: str | None = None, status: str | None = None,
                   paths: list[str] | None = None, page: int = 1, limit: int = DEFAULT_LIMIT,
                   with_territory: bool = False) -> tuple[int, list[dict[str, Any]]]:
    params: dict[str, Any] = {"v": version.id}
    where = ["u.version_id = :v", subtree_sql(paths, "u", params)]
    if type_name:
        where.append("u.type_id IN (SELECT fid FROM org_unit_type WHERE name = :tn)")
        params["tn"] = type_name
    if level is not None:
        where.append("u.depth = :lvl")
        params["lvl"] = level
    if parent:
        row = conn.execute(
            text("SELECT unit_key FROM org_unit WHERE version_id = :v AND "
                 "(uuid = :p OR source_ref = :p)"), {"v": version.id, "p": parent}).first()
        if row is None:
            raise NotFound(f"No unit with uuid or ref {parent!r} in {version.label}.",
                           parameter="parent")
        where.append("u.parent_key = :pk")
        params["pk"] = row[0]
    if status:
        where.append("u.validation_status = :st")
        params["st"] = status
    if search:
        where.append("lower(u.name) LIKE :q")
        params["q"] = "%" + search.lower().replace("%", "").replace("_", "") + "%"
    if bbox is not None:
        params |= {"bx1": bbox[0], "by1": bbox[1], "bx2": bbox[2], "by2": bbox[3]}
        where.append(_bbox_sql(reg.backend, "u", params))
    cond = " AND ".join(where)
    count = conn.execute(text(f"SELECT count(*) FROM org_unit u WHERE {cond}"), params).scalar_one()
    params |= {"lim": limit, "off": (page - 1) * limit}
    ter = ""
    if with_territory:
        ter = (f", (SELECT {geometry.select_sql(reg.backend, 'tt.territory')} FROM "
               "org_unit_territory tt WHERE tt.unit_fid = u.fid) AS territory")
    rows = conn.execute(
        text(f"SELECT {unit_columns(reg.backend)}, t.fid AS type_id{ter} FROM org_unit u "
             f"{unit_joins()} WHERE {cond} ORDER BY u.path LIMIT :lim OFFSET :off"),
        params,
    ).all()
    out = []
    for r in rows:
        d = row_to_dict(reg.backend, r)
        if with_territory:
            geom = geometry.decode(reg.backend, r.territory)
            d["territory"] = geom.__geo_interface__ if geom is not None else None
        out.append(d)
    return int(count), out


def as_geojson(units: list[dict[str, Any]], extra: dict[str, Any]) -> dict[str, Any]:
    features = []
    for u in units:
        props = {k: v for k, v in u.items() if k not in ("location", "territory")}
        geom = u.get("territory")
        if geom is None and u.get("location") is not None:
            geom = {"type": "Point", "coordinates": u["location"]}
        features.append({"type": "Feature", "id": u["uuid"], "geometry": geom,
                         "properties": props})
    return {"type": "FeatureCollection", "features": features, **extra}


# --- handlers -------------------------------------------------------------------------------


def sources_handler(request: Request, ctx: Any) -> Response:
    glue.require_user(request, ctx)
    return json_response({"sources": versions.list_sources(glue.registry(ctx))})


def versions_handler(request: Request, ctx: Any, source: str) -> Response:
    glue.require_user(request, ctx)
    if source.isdigit() and len(source) > 15:  # not an id the database can hold
        raise NotFound(f"No data source named {source!r}.")
    return json_response({"versions": versions.list_versions(glue.registry(ctx), source)})


def org_units_handler(request: Request, ctx: Any) -> Response:
    user = glue.require_user(request, ctx)
    reg = glue.registry(ctx)
    fmt = request.args.get("format", "json")
    if fmt not in ("json", "geojson"):
        raise InvalidInput("Query parameter 'format' must be json or geojson.", parameter="format")
    page, limit = paging(request)
    status = request.args.get("validation_status")
    if status is not None and status not in ("new", "valid", "rejected"):
        raise InvalidInput("Query parameter 'validation_status' must be new, valid or rejected.",
                           parameter="validation_status")
    with reg.read() as conn:
        version = version_param(conn, request)
        count, units = list_org_units(
            reg, conn, version, type_name=request.args.get("type"),
            level=level_param(request),
            parent=request.args.get("parent"), bbox=bbox_param(request),
            search=request.args.get("q"), status=status,
            paths=glue.user_paths(conn, user, version), page=page, limit=limit,
            with_territory=fmt == "geojson" or request.args.get("territory") == "true",
        )
    meta = {"version": version.to_dict()}
    if fmt == "geojson":
        env = envelope("features", [], count, page, limit)
        env.pop("features")
        return json_response(as_geojson(units, env | meta), content_type="application/geo+json")
    return json_response(envelope("org_units", units, count, page, limit) | meta)


def org_unit_handler(request: Request, ctx: Any, ident: str) -> Response:
    user = glue.require_user(request, ctx)
    reg = glue.registry(ctx)
    with reg.read() as conn:
        version = version_param(conn, request)
        paths = glue.user_paths(conn, user, version)
        params: dict[str, Any] = {"v": version.id, "i": ident}
        row = conn.execute(
            text(f"SELECT {unit_columns(reg.backend)} FROM org_unit u {unit_joins()} "
                 f"WHERE u.version_id = :v AND (u.uuid = :i OR u.source_ref = :i) AND "
                 f"{subtree_sql(paths, 'u', params)} LIMIT 1"), params).first()
        if row is None:
            raise NotFound(f"No unit with uuid or ref {ident!r} in {version.label}.")
        data = row_to_dict(reg.backend, row)
        ter = conn.execute(
            text(f"SELECT {geometry.select_sql(reg.backend, 'territory')} FROM "
                 "org_unit_territory WHERE unit_fid = :f"), {"f": row.fid}).scalar()
        geom = geometry.decode(reg.backend, ter)
        data["territory"] = geom.__geo_interface__ if geom is not None else None
    return json_response(data | {"version": version.to_dict()})


def diff_handler(request: Request, ctx: Any) -> Response:
    user = glue.require_user(request, ctx)
    from storage.diff import diff_versions

    left, right = request.args.get("left"), request.args.get("right")
    if not left or not right:
        raise InvalidInput("Give both versions: ?left=SOURCE:NUMBER&right=SOURCE:NUMBER.",
                           parameter="left" if not left else "right")
    fields = request.args.get("fields")
    reg = glue.registry(ctx)
    with reg.read() as conn:
        within = glue.user_version_paths(conn, user)
    result = diff_versions(
        reg, left, right, fields=[f for f in fields.split(",") if f] if fields else None,
        include_unchanged=request.args.get("include_unchanged") == "true",
    )
    if within is not None:
        result = diff_in_area(reg, result, within)
    return json_response(result.to_dict())


def _area_clause(within: list[tuple[int, str]], alias: str, params: dict[str, Any],
                 prefix: str) -> str:
    """``alias`` (an org_unit row) lies in one of the ``(version_id, path)`` subtrees."""
    parts = []
    for i, (vid, path) in enumerate(within):
        params |= {f"{prefix}v{i}": vid, f"{prefix}lo{i}": path,
                   f"{prefix}hi{i}": path[:-1] + "0"}
        parts.append(f"({alias}.version_id = :{prefix}v{i} AND {alias}.path >= :{prefix}lo{i} "
                     f"AND {alias}.path < :{prefix}hi{i})")
    return "(" + (" OR ".join(parts) or "1 = 0") + ")"


def _uuids_in_area(conn: Connection, within: list[tuple[int, str]], version_id: int
                   ) -> set[str]:
    mine = [(v, p) for v, p in within if v == version_id]
    if not mine:
        return set()
    params: dict[str, Any] = {"v": version_id}
    cond = _area_clause(mine, "u", params, "a")
    return {str(r[0]) for r in conn.execute(
        text(f"SELECT u.uuid FROM org_unit u WHERE u.version_id = :v AND {cond}"), params)}


def diff_in_area(reg: Registry, result: Any, within: list[tuple[int, str]]) -> Any:
    """The diff restricted to a user's area: a pair is kept when its left-hand unit is in
    the area in the left version or its right-hand unit in the right version (a unit moved
    out of the area is still shown, with where it went).  Totals, levels and counts are
    recomputed from the kept pairs alone and say nothing about the rest of the registry.

    Unchanged pairs are mostly not listed (they never leave SQL); when every pair is by
    uuid they are counted per level here with one join of the two versions, else (pairs
    by source ref, which only the diff itself makes) the diff is run again listing them."""
    from dataclasses import replace

    from storage.diff import STATUSES, diff_versions

    wanted = result.include_unchanged
    if not wanted and result.counts["paired_by_source_ref"]:
        result = diff_versions(reg, result.left, result.right, fields=result.fields,
                               include_unchanged=True)
    lid, rid = result.left.id, result.right.id
    with reg.read() as conn:
        left_in = _uuids_in_area(conn, within, lid)
        right_in = _uuids_in_area(conn, within, rid)
        hidden: dict[tuple[int, str], int] = {}
        if not result.include_unchanged:  # the area's uuid pairs, per level (right side)
            params: dict[str, Any] = {"l": lid, "r": rid}
            area_l = _area_clause([w for w in within if w[0] == lid], "a", params, "x")
            area_r = _area_clause([w for w in within if w[0] == rid], "b", params, "y")
            for depth, type_name, n in conn.execute(text(
                    "SELECT b.depth, t.name, count(*) FROM org_unit a JOIN org_unit b ON "
                    "b.version_id = :r AND b.uuid = a.uuid LEFT JOIN org_unit_type t ON "
                    f"t.fid = b.type_id WHERE a.version_id = :l AND ({area_l} OR {area_r}) "
                    "GROUP BY b.depth, t.name"), params):
                hidden[(-1 if depth is None else int(depth), type_name or "")] = int(n)
    kept = [u for u in result.units
            if (u.before is not None and u.before["uuid"] in left_in)
            or (u.after is not None and u.after["uuid"] in right_in)]
    levels: dict[tuple[int, str], dict[str, int]] = {}
    for u in kept:
        key = (-1 if u.depth is None else int(u.depth), u.type or "")
        levels.setdefault(key, {s: 0 for s in STATUSES})[u.status] += 1
        if not result.include_unchanged and u.before is not None and u.after is not None:
            hidden[key] = hidden.get(key, 0) - 1  # listed: the rest of the level is unchanged
    for key, n in hidden.items():
        if n > 0:
            levels.setdefault(key, {s: 0 for s in STATUSES})["unchanged"] += n
    totals = {s: sum(c[s] for c in levels.values()) for s in STATUSES}
    by_level = [{"depth": None if d < 0 else d, "type": t or None, **c,
                 "total": sum(c.values())} for (d, t), c in sorted(levels.items())]
    unpaired_l = sum(u.before is not None and u.after is None for u in kept)
    unpaired_r = sum(u.before is None and u.after is not None for u in kept)
    paired = sum(totals.values()) - unpaired_l - unpaired_r
    by_ref = sum(u.matched_by == "source_ref" for u in kept)
    counts = {"left_units": paired + unpaired_l, "right_units": paired + unpaired_r,
              "paired": paired, "paired_by_uuid": paired - by_ref,
              "paired_by_source_ref": by_ref}
    listed = kept if wanted else [u for u in kept if u.status != "unchanged"]
    return replace(result, units=listed, totals=totals, by_level=by_level, counts=counts,
                   include_unchanged=wanted)


def links_handler(request: Request, ctx: Any) -> Response:
    user = glue.require_user(request, ctx)
    reg = glue.registry(ctx)
    page, limit = paging(request)
    where: list[str] = ["1 = 1"]
    params: dict[str, Any] = {}
    with reg.read() as conn:
        within = glue.user_version_paths(conn, user)
    if within is not None:  # links with either end inside the user's area
        where.append(
            "(EXISTS (SELECT 1 FROM org_unit a WHERE a.version_id = l.left_version_id AND "
            f"a.uuid = l.left_unit_uuid AND {_area_clause(within, 'a', params, 'l')}) OR "
            "EXISTS (SELECT 1 FROM org_unit b WHERE b.version_id = l.right_version_id AND "
            f"b.uuid = l.right_unit_uuid AND {_area_clause(within, 'b', params, 'r')}))")
    run = int_param(request, "run", None, minimum=0, maximum=10**12)
    if run is not None:
        where.append("l.run_id = :run")
        params["run"] = run
    status = request.args.get("status")
    if status:
        where.append("l.status = :st")
        params["st"] = status
    cond = " AND ".join(where)
    with reg.read() as conn:
        count = conn.execute(text(f"SELECT count(*) FROM link l WHERE {cond}"), params).scalar_one()
        rows = conn.execute(
            text(
                "SELECT l.fid, l.run_id, l.left_version_id, l.left_unit_uuid, lu.name AS left_name, "
                "l.right_version_id, l.right_unit_uuid, ru.name AS right_name, l.score, l.status, "
                "l.kind, l.evidence, l.reviewer, l.reviewed_at, l.created_at FROM link l "
                "LEFT JOIN org_unit lu ON lu.version_id = l.left_version_id "
                "AND lu.uuid = l.left_unit_uuid "
                "LEFT JOIN org_unit ru ON ru.version_id = l.right_version_id "
                "AND ru.uuid = l.right_unit_uuid "
                f"WHERE {cond} ORDER BY l.fid LIMIT :lim OFFSET :off"
            ),
            params | {"lim": limit, "off": (page - 1) * limit},
        ).all()
    links = [
        {"id": r.fid, "run_id": r.run_id,
         "left": {"version_id": r.left_version_id, "uuid": r.left_unit_uuid, "name": r.left_name},
         "right": {"version_id": r.right_version_id, "uuid": r.right_unit_uuid,
                   "name": r.right_name},
         "score": r.score, "status": r.status, "kind": r.kind,
         "evidence": json_value(r.evidence), "reviewer": r.reviewer,
         "reviewed_at": r.reviewed_at, "created_at": r.created_at}
        for r in rows
    ]
    return json_response(envelope("links", links, int(count), page, limit))


def submissions_handler(request: Request, ctx: Any) -> Response:
    user = glue.require_user(request, ctx)
    page, limit = paging(request)
    data = glue.list_submissions(ctx, user, form=request.args.get("form"),
                                 since=request.args.get("since"), page=page, limit=limit)
    return json_response(envelope("submissions", data["results"], data["count"], page, limit)
                         | {k: v for k, v in data.items() if k not in ("results", "count")})


def changes_handler(request: Request, ctx: Any) -> Response:
    """The requests the user may open (:func:`_visible_change`), counted and paged."""
    user = glue.require_user(request, ctx)
    reg = glue.registry(ctx)
    page, limit = paging(request)
    status = request.args.get("status")
    kind = request.args.get("kind")
    with reg.read() as conn:
        within = glue.user_version_paths(conn, user)
    data = cr.list_change_requests(reg, status=status, kind=kind,
                                   source=request.args.get("source"),
                                   visible_within=within, limit=limit, offset=(page - 1) * limit)
    return json_response(envelope("change_requests", data["results"], data["count"], page, limit))


def _visible_change(conn: Connection, user: Any, data: dict[str, Any]) -> None:
    """A restricted user may see (and a reviewer review) a request only when everything
    it touches is inside their area: the unit (for a creation, its parent) — else 404 —
    and the parent a move proposes — else 403, or a collector and a reviewer of one area
    could move a unit into another.  While the request waits for review both are also
    checked in the draft an approval writes to, where they may since have moved.

    The REST routes and the web pages (view, approve, reject) all call this.  The list
    (``changes_handler``) applies the same rule to every matching request before paging
    (``list_change_requests(visible_within=…)``); a change here must be made there too
    (``tests/test_server_changes_area_list.py`` compares the two request by request)."""
    within = glue.user_version_paths(conn, user)
    if within is None:
        return
    creation = data["kind"] == "creation"
    anchor = data["new"].get("parent") if creation else data["unit_uuid"]
    if not in_area(conn, within, data["version_id"], anchor):
        raise NotFound(f"No change request {data['id']} in your area.")
    moves = not creation and "parent" in data["new"]
    if moves and not in_area(conn, within, data["version_id"], data["new"]["parent"]):
        raise auth.Forbidden(_outside_message(data))
    if data["status"] != "new":
        return
    try:
        target = cr.target_draft(conn, versions.version_by_id(conn, data["version_id"]))
    except PublishedVersionError:
        return  # nothing can be approved: the approval says so
    if target.id == data["version_id"]:
        return
    if in_area(conn, within, target.id, anchor) is False or (
            moves and in_area(conn, within, target.id, data["new"]["parent"]) is False):
        raise auth.Forbidden(_outside_message(data, target.label))


def _outside_message(data: dict[str, Any], draft: str | None = None) -> str:
    what = f"Change request {data['id']} ({data.get('unit_name') or data['unit_uuid']})"
    if draft is not None:
        return (f"{what} touches units outside your area in {draft}, where an approval "
                "would write: a reviewer whose area covers them (or an admin) must review it.")
    parent = data.get("new_parent_name") or data["new"].get("parent")
    where = f"under {parent!r}" if parent else "to the top level"
    return (f"{what} moves the unit {where}, outside your area: a reviewer whose area "
            "covers both places (or an admin) must review it.")


def change_handler(request: Request, ctx: Any, ident: str) -> Response:
    user = glue.require_user(request, ctx)
    reg = glue.registry(ctx)
    data = cr.get_change_request(reg, ident)
    with reg.read() as conn:
        _visible_change(conn, user, data)
    return json_response(data)


def _review(request: Request, ctx: Any, ident: str,
            act: Callable[[Registry, dict[str, Any], str], dict[str, Any]]) -> Response:
    user = glue.require_role(request, ctx, ("reviewer", "admin"))
    reg = glue.registry(ctx)
    body = read_json(request, default={})
    if not isinstance(body, dict):
        raise InvalidInput("The body must be a JSON object.")
    data = cr.get_change_request(reg, ident)
    with reg.read() as conn:
        _visible_change(conn, user, data)
    return json_response(act(reg, body, glue.user_name(user)))


def approve_handler(request: Request, ctx: Any, ident: str) -> Response:
    def act(reg: Registry, body: dict[str, Any], who: str) -> dict[str, Any]:
        fields = body.get("fields")
        if fields is not None and (not isinstance(fields, list)
                                   or not all(isinstance(f, str) for f in fields)):
            raise InvalidInput("'fields' must be a list of field names.", field="fields")
        return cr.approve_change_request(reg, ident, reviewer=who, fields=fields)

    return _review(request, ctx, ident, act)


def reject_handler(request: Request, ctx: Any, ident: str) -> Response:
    def act(reg: Registry, body: dict[str, Any], who: str) -> dict[str, Any]:
        comment = body.get("comment")
        if not isinstance(comment, str):
            raise InvalidInput("'comment' (text) is required to reject.", field="comment")
        return cr.reject_change_request(reg, ident, reviewer=who, comment=comment)

    return _review(request, ctx, ident, act)


def read_json(request: Request, default: Any = None) -> Any:
    raw = request.get_data(cache=True)
    if not raw.strip():
        return default
    try:
        return json.loads(raw)
    except (ValueError, UnicodeDecodeError) as error:
        raise InvalidInput(f"The body is not valid JSON ({error}).") from None


def openapi_handler(request: Request, ctx: Any) -> Response:
    from local_server.openapi import openapi_document

    return json_response(openapi_document(request.host_url.rstrip("/")))


def schedule_handler(request: Request, ctx: Any) -> Response:
    """The scheduled sync jobs (schedule, last and next run) and the latest runs — what
    ``georeg schedule list`` and ``history`` show; reviewers and admins only, as the
    errors of runs name the upstream servers."""
    from sync.scheduler import history, list_jobs

    glue.require_role(request, ctx, ("reviewer", "admin"))
    reg = glue.registry(ctx)
    limit = int_param(request, "limit", 20, minimum=1, maximum=500) or 20
    return json_response({"jobs": list_jobs(reg),
                          "runs": history(reg, request.args.get("job") or None, limit)})


def rules() -> list[Rule]:
    w = glue.wrap
    return [
        Rule("/api/openapi.json", endpoint=w(openapi_handler), methods=["GET"]),
        Rule(f"{PREFIX}/sources", endpoint=w(sources_handler), methods=["GET"]),
        Rule(f"{PREFIX}/sources/<source>/versions", endpoint=w(versions_handler),
             methods=["GET"]),
        Rule(f"{PREFIX}/orgunits", endpoint=w(org_units_handler), methods=["GET"]),
        Rule(f"{PREFIX}/orgunits/<ident>", endpoint=w(org_unit_handler), methods=["GET"]),
        Rule(f"{PREFIX}/diff", endpoint=w(diff_handler), methods=["GET"]),
        Rule(f"{PREFIX}/links", endpoint=w(links_handler), methods=["GET"]),
        Rule(f"{PREFIX}/submissions", endpoint=w(submissions_handler), methods=["GET"]),
        Rule(f"{PREFIX}/changes", endpoint=w(changes_handler), methods=["GET"]),
        Rule(f"{PREFIX}/changes/<ident>", endpoint=w(change_handler), methods=["GET"]),
        Rule(f"{PREFIX}/changes/<ident>/approve", endpoint=w(approve_handler),
             methods=["POST"]),
        Rule(f"{PREFIX}/changes/<ident>/reject", endpoint=w(reject_handler), methods=["POST"]),
        Rule(f"{PREFIX}/schedule", endpoint=w(schedule_handler), methods=["GET"]),
    ]
